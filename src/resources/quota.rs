//! What objects use of a ResourceQuota, as kube's quota evaluators count it: the object
//! counts (`pods`, `services`, `count/deployments.apps`, ...), a live pod's requests and
//! limits (`requests.cpu`, `limits.memory`, ...), Service types and node ports, claims and
//! their storage per class; which quotas an object falls under (scopes, scope selectors);
//! and kube's messages. Shared by the ResourceQuota admission in the API server and the
//! controller that writes `status.used`.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::pod_resources;
use super::quantity::{format, milli};

/// Amounts per quota resource name, in thousandths (a count of 1 is 1000).
pub type Usage = BTreeMap<String, i128>;

const ONE: i128 = 1000;

/// The compute resources every container must name when a quota limits them (kube's
/// backward-compatible pod constraint).
const MUST_SPECIFY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Whether an amount of `name` is bytes (written back with binary suffixes).
fn is_bytes(name: &str) -> bool {
    name.contains("memory") || name.contains("storage") || name.contains("hugepages-")
}

/// `count/<plural>` for core kinds, `count/<plural>.<group>` otherwise.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// The kind (group, plural) a quota resource name counts, when it counts objects of one.
pub fn counted_kind(name: &str) -> Option<(String, String)> {
    let core = |p: &str| Some((String::new(), p.to_string()));
    if let Some(rest) = name.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), rest.to_string()),
        });
    }
    match name {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        n if n.starts_with("requests.") && n != "requests.storage" => core("pods"),
        n if n.starts_with("limits.") || n.starts_with("hugepages-") => core("pods"),
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        n if n.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(name),
        _ => None,
    }
}

/// Whether a pod still counts against compute quota: not finished, and not past the end of
/// its deletion grace period (kube's QuotaV1Pod).
fn pod_counts(pod: &Value, now: Timestamp) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let deleted = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    match (deleted, grace) {
        (Some(at), Some(grace)) => at.as_second().saturating_add(grace) > now.as_second(),
        _ => true,
    }
}

/// A container's or pod's requests and limits under quota names: `cpu` and `requests.cpu`
/// for a cpu request, `limits.cpu` for its limit; extended resources only as requests.
fn compute_usage(requests: &pod_resources::Resources, limits: &pod_resources::Resources) -> Usage {
    let mut u = Usage::new();
    for (k, v) in requests {
        match k.as_str() {
            "cpu" | "memory" | "ephemeral-storage" => {
                u.insert(k.clone(), *v);
                u.insert(format!("requests.{k}"), *v);
            }
            _ => {
                u.insert(format!("requests.{k}"), *v);
            }
        }
    }
    for (k, v) in limits {
        if matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
            || k.starts_with("hugepages-")
        {
            u.insert(format!("limits.{k}"), *v);
        }
    }
    u
}

fn quantities(v: Option<&Value>) -> pod_resources::Resources {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), milli(&Quantity(q.as_str()?.to_string())))))
        .collect()
}

/// What one object of `group/plural` uses, by every quota resource name it touches.
pub fn usage(group: &str, plural: &str, obj: &Value, now: Timestamp) -> Usage {
    let mut u = Usage::new();
    u.insert(count_name(group, plural), ONE);
    if !group.is_empty() {
        return u;
    }
    match plural {
        "pods" => {
            if !pod_counts(obj, now) {
                return u;
            }
            let Ok(pod) = serde_json::from_value::<Pod>(obj.clone()) else {
                return u;
            };
            u.insert("pods".into(), ONE);
            let requests = pod_resources::requests(&pod);
            let limits = pod_resources::limits(&pod);
            u.extend(compute_usage(&requests, &limits));
        }
        "services" => {
            u.insert("services".into(), ONE);
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as i128;
            match obj.pointer("/spec/type").and_then(Value::as_str) {
                Some("LoadBalancer") => {
                    u.insert("services.loadbalancers".into(), ONE);
                    let node_ports = obj
                        .pointer("/spec/allocateLoadBalancerNodePorts")
                        .and_then(Value::as_bool)
                        != Some(false);
                    u.insert(
                        "services.nodeports".into(),
                        if node_ports { ports * ONE } else { 0 },
                    );
                }
                Some("NodePort") => {
                    u.insert("services.nodeports".into(), ports * ONE);
                }
                _ => {}
            }
        }
        "persistentvolumeclaims" => {
            u.insert("persistentvolumeclaims".into(), ONE);
            let storage = quantities(obj.pointer("/spec/resources/requests"))
                .get("storage")
                .copied()
                .unwrap_or(0);
            u.insert("requests.storage".into(), storage);
            if let Some(class) = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
            {
                let prefix = format!("{class}.storageclass.storage.k8s.io/");
                u.insert(format!("{prefix}persistentvolumeclaims"), ONE);
                u.insert(format!("{prefix}requests.storage"), storage);
            }
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            u.insert(plural.to_string(), ONE);
        }
        _ => {}
    }
    u
}

fn best_effort(pod: &Value) -> bool {
    let Ok(pod) = serde_json::from_value::<Pod>(pod.clone()) else {
        return false;
    };
    let spec = pod.spec.unwrap_or_default();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .all(|c| {
            let r = c.resources.clone().unwrap_or_default();
            let named = |m: &Option<BTreeMap<String, Quantity>>| {
                m.iter().flatten().any(|(k, _)| k == "cpu" || k == "memory")
            };
            !named(&r.requests) && !named(&r.limits)
        })
}

fn scope_matches(scope: &str, operator: &str, values: &[&str], pod: &Value) -> bool {
    let terminating = pod
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|d| d >= 0);
    let base = match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "CrossNamespacePodAffinity" => ["podAffinity", "podAntiAffinity"].iter().any(|a| {
            [
                "requiredDuringSchedulingIgnoredDuringExecution",
                "preferredDuringSchedulingIgnoredDuringExecution",
            ]
            .iter()
            .flat_map(|w| {
                pod.pointer(&format!("/spec/affinity/{a}/{w}"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .any(|t| {
                let term = t.get("podAffinityTerm").unwrap_or(t);
                term.get("namespaceSelector").is_some()
                    || term
                        .get("namespaces")
                        .and_then(Value::as_array)
                        .is_some_and(|n| !n.is_empty())
            })
        }),
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str);
            return match operator {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => !class.is_some_and(|c| values.contains(&c)),
                "Exists" => class.is_some_and(|c| !c.is_empty()),
                "DoesNotExist" => class.is_none_or(str::is_empty),
                _ => false,
            };
        }
        _ => false,
    };
    match operator {
        "DoesNotExist" | "NotIn" => !base,
        _ => base,
    }
}

/// Whether a quota (its spec) covers the object: a quota with scopes counts only pods, and
/// only those every scope matches.
pub fn covers(spec: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let scopes: Vec<&str> = spec
        .get("scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let selector: Vec<&Value> = spec
        .pointer("/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if scopes.is_empty() && selector.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    scopes.iter().all(|s| scope_matches(s, "Exists", &[], obj))
        && selector.iter().all(|e| {
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            scope_matches(
                e.get("scopeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                e.get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                &values,
                obj,
            )
        })
}

/// kube's pod constraint: with cpu or memory under quota, each container must name it.
/// `None` when the pod complies, else the reason ("must specify limits.cpu for: app").
pub fn missing_compute(limited: &BTreeSet<String>, pod: &Value) -> Option<String> {
    let required: BTreeSet<&str> = MUST_SPECIFY
        .iter()
        .copied()
        .filter(|r| limited.contains(*r))
        .collect();
    if required.is_empty() {
        return None;
    }
    let pod = serde_json::from_value::<Pod>(pod.clone()).ok()?;
    let spec = pod.spec.unwrap_or_default();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.clone().unwrap_or_default();
        let requests = r
            .requests
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), milli(v)))
            .collect();
        let limits = r
            .limits
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), milli(v)))
            .collect();
        let has = compute_usage(&requests, &limits);
        for want in &required {
            if !has.contains_key(*want) {
                missing.entry(want).or_default().insert(c.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// A ResourceList (`{"cpu": "500m"}`) as amounts.
pub fn parse(list: Option<&Value>) -> Usage {
    quantities(list)
}

/// Amounts as a ResourceList, in canonical quantities.
pub fn to_list(u: &Usage) -> Value {
    let map: serde_json::Map<String, Value> = u
        .iter()
        .map(|(k, v)| (k.clone(), json!(format(*v, is_bytes(k)))))
        .collect();
    Value::Object(map)
}

/// `name=amount` pairs, sorted, comma-joined: how kube's quota messages print a list.
pub fn pretty(u: &Usage) -> String {
    u.iter()
        .map(|(k, v)| format!("{k}={}", format(*v, is_bytes(k))))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn pod(resources: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "resources": resources}
        ]}})
    }

    #[test]
    fn a_live_pod_uses_its_count_and_compute_a_finished_one_only_its_count() {
        let p = pod(
            json!({"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}),
        );
        let u = usage("", "pods", &p, now());
        assert_eq!(u["pods"], ONE);
        assert_eq!(u["count/pods"], ONE);
        assert_eq!(u["requests.cpu"], 250);
        assert_eq!(u["cpu"], 250);
        assert_eq!(
            pretty(&Usage::from([("limits.memory".into(), u["limits.memory"])])),
            "limits.memory=128Mi"
        );
        let mut done = p.clone();
        done["status"] = json!({"phase": "Succeeded"});
        let u = usage("", "pods", &done, now());
        assert_eq!(u.keys().collect::<Vec<_>>(), ["count/pods"]);
    }

    #[test]
    fn services_claims_and_counts() {
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &lb, now());
        assert_eq!(
            (u["services.loadbalancers"], u["services.nodeports"]),
            (ONE, 2 * ONE)
        );
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &pvc, now());
        assert_eq!(
            pretty(&Usage::from([(
                "requests.storage".into(),
                u["requests.storage"]
            )])),
            "requests.storage=1Gi"
        );
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/persistentvolumeclaims"],
            ONE
        );
        let u = usage("apps", "deployments", &json!({}), now());
        assert_eq!(u["count/deployments.apps"], ONE);
        assert_eq!(
            counted_kind("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            counted_kind("requests.cpu"),
            Some(("".into(), "pods".into()))
        );
        assert_eq!(
            counted_kind("requests.storage"),
            Some(("".into(), "persistentvolumeclaims".into()))
        );
    }

    #[test]
    fn scopes_select_pods() {
        let best = pod(json!({}));
        let burst = pod(json!({"requests": {"cpu": "1"}}));
        let spec = json!({"scopes": ["BestEffort"]});
        assert!(covers(&spec, "", "pods", &best));
        assert!(!covers(&spec, "", "pods", &burst));
        assert!(!covers(&spec, "", "services", &json!({})));
        let mut high = burst.clone();
        high["spec"]["priorityClassName"] = json!("high");
        let spec = json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}});
        assert!(covers(&spec, "", "pods", &high));
        assert!(!covers(&spec, "", "pods", &burst));
        assert!(covers(&json!({"hard": {}}), "", "services", &json!({})));
    }

    #[test]
    fn containers_must_name_the_compute_a_quota_limits() {
        let limited: BTreeSet<String> = ["limits.cpu".to_string(), "pods".to_string()].into();
        let p = pod(json!({"requests": {"cpu": "1"}}));
        assert_eq!(
            missing_compute(&limited, &p).as_deref(),
            Some("must specify limits.cpu for: app")
        );
        let ok = pod(json!({"limits": {"cpu": "1"}}));
        assert_eq!(missing_compute(&limited, &ok), None);
    }
}
