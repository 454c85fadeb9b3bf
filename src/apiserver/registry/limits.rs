//! LimitRanger admission: on create, a pod's containers get the default requests and limits
//! of their namespace's LimitRanges (noted in the `kubernetes.io/limit-ranger` annotation),
//! then each Container, Pod and PersistentVolumeClaim item's min, max and
//! maxLimitRequestRatio are enforced, with kube's messages.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};

use super::{decode, Registry};
use crate::apiserver::resources::Resource;
use crate::apiserver::status::ApiError;
use crate::resources::quantity::{format, milli};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn amounts(v: Option<&Value>) -> BTreeMap<String, i128> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), milli(&Quantity(q.as_str()?.to_string())))))
        .collect()
}

fn shown(name: &str, v: i128) -> String {
    format(v, name != "cpu")
}

/// Sets a container's missing requests and limits from one Container item; returns the
/// resource names it set, (requests, limits).
fn default_container(item: &Value, c: &mut Value) -> (Vec<String>, Vec<String>) {
    let mut set = (Vec::new(), Vec::new());
    for (field, from, out) in [
        ("requests", "defaultRequest", &mut set.0),
        ("limits", "default", &mut set.1),
    ] {
        let Some(defaults) = item.get(from).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in defaults {
            if c.pointer(&format!("/resources/{field}/{k}")).is_some() {
                continue;
            }
            if !c.get("resources").is_some_and(Value::is_object) {
                c["resources"] = json!({});
            }
            if !c["resources"].get(field).is_some_and(Value::is_object) {
                c["resources"][field] = json!({});
            }
            c["resources"][field][k] = v.clone();
            out.push(k.clone());
        }
    }
    set
}

/// min, max and maxLimitRequestRatio of one item against a request and limit per resource.
fn check(
    item: &Value,
    kind: &str,
    requests: &BTreeMap<String, i128>,
    limits: &BTreeMap<String, i128>,
    errs: &mut Vec<String>,
) {
    for (k, min) in amounts(item.get("min")) {
        match requests.get(&k) {
            None => errs.push(format!(
                "minimum {k} usage per {kind} is {}.  No request is specified",
                shown(&k, min)
            )),
            Some(r) if *r < min => errs.push(format!(
                "minimum {k} usage per {kind} is {}, but request is {}",
                shown(&k, min),
                shown(&k, *r)
            )),
            _ => {}
        }
    }
    for (k, max) in amounts(item.get("max")) {
        // A claim has no limits: its request is held to the max.
        let (value, what) = if kind == "PersistentVolumeClaim" {
            (requests.get(&k), "request")
        } else {
            (limits.get(&k), "limit")
        };
        match value {
            None => errs.push(format!(
                "maximum {k} usage per {kind} is {}.  No {what} is specified",
                shown(&k, max)
            )),
            Some(v) if *v > max => errs.push(format!(
                "maximum {k} usage per {kind} is {}, but {what} is {}",
                shown(&k, max),
                shown(&k, *v)
            )),
            _ => {}
        }
    }
    for (k, ratio) in amounts(item.get("maxLimitRequestRatio")) {
        let (Some(l), Some(r)) = (limits.get(&k), requests.get(&k)) else {
            errs.push(format!(
                "{k} max limit to request ratio per {kind} is {}, but no request is specified or request is 0",
                shown("cpu", ratio)
            ));
            continue;
        };
        if *r == 0 || *l * 1000 > ratio * *r {
            errs.push(format!(
                "{k} max limit to request ratio per {kind} is {}, but provided ratio is {:.6}",
                shown("cpu", ratio),
                if *r == 0 {
                    f64::INFINITY
                } else {
                    *l as f64 / *r as f64
                }
            ));
        }
    }
}

fn container_amounts(c: &Value, field: &str) -> BTreeMap<String, i128> {
    amounts(c.pointer(&format!("/resources/{field}")))
}

impl Registry {
    /// LimitRanger for a create of a pod or claim in `ns`: defaults, then limits.
    pub(super) async fn admit_limits(
        &self,
        r: &Resource,
        ns: &str,
        name: &str,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let pod = r.plural == "pods";
        if !r.group.is_empty() || !(pod || r.plural == "persistentvolumeclaims") {
            return Ok(());
        }
        let ranges = self.stored_in("limitranges", ns).await?;
        if ranges.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        for kv in &ranges {
            let range = decode(kv)?;
            items.extend(
                range
                    .pointer("/spec/limits")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let of_type = |t: &str| {
            items
                .iter()
                .filter(|i| i.get("type").and_then(Value::as_str) == Some(t))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut errs = Vec::new();
        if pod {
            let mut notes = Vec::new();
            for item in of_type("Container") {
                for (list, label) in [
                    ("initContainers", "init container"),
                    ("containers", "container"),
                ] {
                    let Some(cs) = obj
                        .pointer_mut(&format!("/spec/{list}"))
                        .and_then(Value::as_array_mut)
                    else {
                        continue;
                    };
                    for c in cs {
                        let cname = c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let (mut req, mut lim) = default_container(&item, c);
                        if !req.is_empty() {
                            req.sort();
                            notes.push(format!("{} request for {label} {cname}", req.join(", ")));
                        }
                        if !lim.is_empty() {
                            lim.sort();
                            notes.push(format!("{} limit for {label} {cname}", lim.join(", ")));
                        }
                        check(
                            &item,
                            "Container",
                            &container_amounts(c, "requests"),
                            &container_amounts(c, "limits"),
                            &mut errs,
                        );
                    }
                }
            }
            if !notes.is_empty() {
                if !obj["metadata"]
                    .get("annotations")
                    .is_some_and(Value::is_object)
                {
                    obj["metadata"]["annotations"] = json!({});
                }
                obj["metadata"]["annotations"][ANNOTATION] =
                    json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
            }
            let pod_items = of_type("Pod");
            if !pod_items.is_empty() {
                if let Ok(p) =
                    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(obj.clone())
                {
                    let requests = crate::resources::pod_resources::requests(&p);
                    let limits = crate::resources::pod_resources::limits(&p);
                    for item in &pod_items {
                        check(item, "Pod", &requests, &limits, &mut errs);
                    }
                }
            }
        } else {
            let requests = amounts(obj.pointer("/spec/resources/requests"));
            for item in of_type("PersistentVolumeClaim") {
                check(
                    &item,
                    "PersistentVolumeClaim",
                    &requests,
                    &BTreeMap::new(),
                    &mut errs,
                );
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        let message = if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("[{}]", errs.join(", "))
        };
        Err(ApiError::forbidden_on(
            r.group,
            r.plural,
            name,
            format!("{} \"{name}\" is forbidden: {message}", r.plural),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_take_the_defaults_they_lack_and_are_held_to_min_and_max() {
        let item = json!({"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
                          "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}, "min": {"cpu": "50m"}});
        let mut c = json!({"name": "app", "resources": {"limits": {"memory": "128Mi"}}});
        let (req, lim) = default_container(&item, &mut c);
        assert_eq!(req, ["cpu"]);
        assert_eq!(lim, ["cpu"]);
        assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
        let mut errs = Vec::new();
        check(
            &item,
            "Container",
            &container_amounts(&c, "requests"),
            &container_amounts(&c, "limits"),
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let big = json!({"name": "big", "resources": {"requests": {"cpu": "10m"}, "limits": {"cpu": "2"}}});
        check(
            &item,
            "Container",
            &container_amounts(&big, "requests"),
            &container_amounts(&big, "limits"),
            &mut errs,
        );
        assert_eq!(
            errs,
            [
                "minimum cpu usage per Container is 50m, but request is 10m",
                "maximum cpu usage per Container is 1, but limit is 2",
            ]
        );
    }
}
