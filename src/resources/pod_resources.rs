//! What a pod asks for and is limited to, summed the way kube sums it (`PodRequests`,
//! `PodLimits`): the scheduler fits pods by it, ResourceQuota counts it.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity::milli;

/// Resource amounts in thousandths (cpu in millicores, memory in milli-bytes), as kube's
/// `resource.Quantity.MilliValue` would give them.
pub type Resources = BTreeMap<String, i128>;

/// A pod's requests: the larger of the app containers' sum and any init container's, plus
/// overhead. Restartable init containers (sidecars) keep running, so they add to the app
/// containers and to every later init container.
pub fn requests(pod: &Pod) -> Resources {
    total(
        pod,
        |c| c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        false,
    )
}

/// A pod's limits, summed like its requests; overhead is added only to resources some
/// container limits (a pod without a memory limit stays unlimited).
pub fn limits(pod: &Pod) -> Resources {
    total(
        pod,
        |c| c.resources.as_ref().and_then(|r| r.limits.as_ref()),
        true,
    )
}

type Amounts<'a> =
    Option<&'a BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>;

fn total(pod: &Pod, of: impl Fn(&Container) -> Amounts<'_>, only_limited: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::new();
    };
    let amounts = |c: &Container| -> Resources {
        of(c)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), milli(v)))
            .collect()
    };
    let mut sum = Resources::new();
    for c in &spec.containers {
        add(&mut sum, &amounts(c));
    }
    let mut sidecars = Resources::new();
    let mut init_peak = Resources::new();
    for c in spec.init_containers.iter().flatten() {
        let own = amounts(c);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &own);
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut during = sidecars.clone();
            add(&mut during, &own);
            max_into(&mut init_peak, &during);
        }
    }
    add(&mut sum, &sidecars);
    max_into(&mut sum, &init_peak);
    for (k, v) in spec.overhead.iter().flatten() {
        if only_limited && !sum.contains_key(k) {
            continue;
        }
        *sum.entry(k.clone()).or_default() += milli(v);
    }
    sum
}

pub fn add(into: &mut Resources, r: &Resources) {
    for (k, v) in r {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_into(into: &mut Resources, r: &Resources) {
    for (k, v) in r {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn init_containers_count_at_their_peak_and_sidecars_throughout() {
        let p = pod(serde_json::json!({"spec": {
            "initContainers": [
                {"name": "side", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "2"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"},
                                            "limits": {"memory": "128Mi"}}},
            ],
            "overhead": {"cpu": "10m", "memory": "1Mi"},
        }}));
        let r = requests(&p);
        assert_eq!(r["cpu"], 2100 + 10);
        assert_eq!(r["memory"], (64 + 1) * 1024 * 1024 * 1000);
        let l = limits(&p);
        assert_eq!(l["memory"], (128 + 1) * 1024 * 1024 * 1000);
        assert_eq!(l["cpu"], 200 + 10);
    }
}
