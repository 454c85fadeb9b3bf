//! Discovery: /version, /api, /api/v1, /apis and /apis/<group>/<version>, built from the
//! resource table, in both the legacy form and the aggregated form (apidiscovery.k8s.io/v2)
//! that kubectl 1.32 asks for first and that saves it one request per group version.
use serde_json::{json, Value};

use super::resources::{Resource, RESOURCES};

/// The Kubernetes version krab's API follows.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";

/// The media type of aggregated discovery responses.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated form (if any) an Accept header asks for, in the client's order.
pub fn aggregated_wanted(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        let has = |s: &str| p.contains(&s);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some(AGGREGATED_V2);
            }
            if has("v=v2beta1") {
                return Some(AGGREGATED_V2BETA1);
            }
        }
        if p.first()
            .is_some_and(|m| *m == "application/json" || *m == "*/*")
            && p.len() == 1
        {
            return None;
        }
    }
    None
}

/// The version krab reports for its API server and kubelet (`v1.32.0+krab-<version>`).
pub fn kube_version() -> String {
    format!(
        "v{KUBE_MAJOR}.{KUBE_MINOR}.0+krab-{}",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": kube_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// The built-in resources, then the custom ones.
fn served(customs: &[Resource]) -> impl Iterator<Item = &Resource> {
    RESOURCES.iter().chain(customs.iter())
}

/// Named groups in table order (custom groups after the built-in ones), each with its
/// versions (preferred first).
fn named_groups(customs: &[Resource]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in served(customs).filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

fn group_entry(g: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": versions, "preferredVersion": versions.first()})
}

pub fn groups(customs: &[Resource]) -> Value {
    let groups: Vec<Value> = named_groups(customs)
        .into_iter()
        .map(|(g, versions)| group_entry(g, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: the APIGroup document of one served group, or None.
pub fn group(name: &str, customs: &[Resource]) -> Option<Value> {
    let (g, versions) = named_groups(customs)
        .into_iter()
        .find(|(g, _)| *g == name)?;
    let mut doc = group_entry(g, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// The APIResourceList of one group version, or None if it is not served.
pub fn resources(group: &str, version: &str, customs: &[Resource]) -> Option<Value> {
    let list: Vec<Value> = served(customs)
        .filter(|r| r.group == group && r.version == version)
        .flat_map(Resource::discovery)
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": list,
    }))
}

/// One resource in the aggregated form, subresources nested.
fn aggregated_resource(r: &Resource) -> Value {
    let entries = r.discovery();
    let subresources: Vec<Value> = entries[1..]
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            let sub = name.split_once('/').map(|(_, s)| s).unwrap_or(name);
            json!({
                "subresource": sub,
                "responseKind": {
                    "group": s.get("group").cloned().unwrap_or(json!(r.group)),
                    "version": s.get("version").cloned().unwrap_or(json!(r.version)),
                    "kind": s["kind"],
                },
                "verbs": s["verbs"],
            })
        })
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        v["subresources"] = json!(subresources);
    }
    v
}

fn aggregated_group(group: &str, versions: &[&str], customs: &[Resource]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = served(customs)
                .filter(|r| r.group == group && r.version == *v)
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": versions})
}

/// `/api` (core) or `/apis` (named groups) in the aggregated form.
pub fn aggregated(core: bool, media_type: &str, customs: &[Resource]) -> Value {
    let api_version = if media_type == AGGREGATED_V2BETA1 {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    let items: Vec<Value> = if core {
        vec![aggregated_group("", &["v1"], customs)]
    } else {
        named_groups(customs)
            .iter()
            .map(|(g, versions)| aggregated_group(g, versions, customs))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_picks_aggregated_v2() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_wanted(kubectl), Some(AGGREGATED_V2));
        assert_eq!(aggregated_wanted("application/json"), None);
        let doc = aggregated(true, AGGREGATED_V2, &[]);
        let pods = doc["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert!(pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subresource"] == "status"));
    }
}
