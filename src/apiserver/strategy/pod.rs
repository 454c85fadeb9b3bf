//! Pods: kube's defaults (restart and DNS policy, scheduler, grace period, image pull policy,
//! the service-account token volume, the default not-ready/unreachable tolerations), the
//! validation that matters for running them, what an update may change, binding to a node
//! and the QoS class.
use serde_json::{json, Map, Value};

use super::super::objects;
use super::super::status::ApiError;
use super::super::validation::{self, FieldErrors};
use super::set_default;

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// kube's image pull policy default: Always for `:latest` or untagged images.
fn pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Value) {
    if let Some(o) = p.as_object_mut() {
        set_default(o, "timeoutSeconds", json!(1));
        set_default(o, "periodSeconds", json!(10));
        set_default(o, "successThreshold", json!(1));
        set_default(o, "failureThreshold", json!(3));
        if let Some(h) = o.get_mut("httpGet").and_then(Value::as_object_mut) {
            set_default(h, "path", json!("/"));
            set_default(h, "scheme", json!("HTTP"));
        }
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(o) = c.as_object_mut() else { return };
    let image = o
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(o, "imagePullPolicy", json!(pull_policy(&image)));
    set_default(o, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(o, "terminationMessagePolicy", json!("File"));
    set_default(o, "resources", json!({}));
    if let Some(ports) = o.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = p.get("containerPort").cloned() {
                    set_default(p, "hostPort", cp);
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = o.get_mut(probe) {
            default_probe(p);
        }
    }
    // Requests default to limits where only limits are given.
    if let Some(res) = o.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
            let requests = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = requests.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// The projected volume the ServiceAccount admission plugin adds: a bound token, the
/// cluster CA and the namespace, mounted where client libraries look.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// kube's SetDefaults_PodSpec: for pods and for the pod templates of workloads.
pub fn default_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for list in CONTAINER_LISTS {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                default_container(c, host_network);
            }
        }
    }
    if let Some(vs) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vs.iter_mut().filter_map(Value::as_object_mut) {
            for (source, mode) in [
                ("configMap", "defaultMode"),
                ("secret", "defaultMode"),
                ("downwardAPI", "defaultMode"),
                ("projected", "defaultMode"),
            ] {
                if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
                    set_default(s, mode, json!(420));
                }
            }
            if let Some(e) = v.get_mut("emptyDir") {
                if e.is_null() {
                    *e = json!({});
                }
            }
        }
    }
}

/// A new pod's defaults (kube's scheme defaulting).
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    default_spec(spec);
    set_default(spec, "enableServiceLinks", json!(true));
}

/// The admission plugins that shape a new pod (Priority, ServiceAccount,
/// DefaultTolerationSeconds), and its first status.
pub fn admit(obj: &mut Value) {
    let is_mirror = obj
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    // ServiceAccount admission: the default account and its token volume; mirror pods of
    // static pods get neither (kube's admission skips them).
    if !is_mirror {
        service_account_admission(spec);
    }
    // DefaultTolerationSeconds admission.
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = t.iter().any(|x| {
                x.get("key").and_then(Value::as_str) == Some(key)
                    || (x.get("key").is_none() && x.get("operator") == Some(&json!("Exists")))
            });
            if !present {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    let qos = qos_class(obj);
    obj["status"] = json!({"phase": "Pending", "qosClass": qos});
}

/// ServiceAccount admission: the default account and its token volume.
fn service_account_admission(spec: &mut serde_json::Map<String, Value>) {
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec
        .get("serviceAccountName")
        .cloned()
        .unwrap_or(json!("default"));
    spec.insert("serviceAccount".into(), sa);
    let automount = spec.get("automountServiceAccountToken") != Some(&json!(false));
    let has_mount = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT))
        });
    if automount && !has_mount {
        let vol = format!(
            "kube-api-access-{}",
            objects::generate_name("").to_lowercase()
        );
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = vols.as_array_mut() {
            v.push(token_volume(&vol));
        }
        for list in ["initContainers", "containers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                    if let Some(m) = mounts.as_array_mut() {
                        m.push(json!({"name": vol, "readOnly": true, "mountPath": TOKEN_MOUNT}));
                    }
                }
            }
        }
    }
}

/// kube's QoS class: Guaranteed when every container has equal CPU and memory requests and
/// limits, BestEffort when none sets any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for res in ["cpu", "memory"] {
            let r = req.and_then(|m| m.get(res));
            let l = lim.and_then(|m| m.get(res));
            if r.is_some() || l.is_some() {
                any = true;
            }
            if l.is_none() || r.is_some_and(|r| Some(r) != l) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// An update may change only images, activeDeadlineSeconds, added tolerations and
/// terminationGracePeriodSeconds; status and nodeName are not the user's to set here.
pub fn prepare_update(old: &Value, new: &mut Value) -> Result<(), ApiError> {
    let (Some(old_spec), Some(new_spec)) = (old.get("spec"), new.get("spec")) else {
        return Ok(());
    };
    let mut comparable = new_spec.clone();
    for list in CONTAINER_LISTS {
        let olds = old_spec.get(list).and_then(Value::as_array);
        if let (Some(cs), Some(olds)) =
            (comparable.get_mut(list).and_then(Value::as_array_mut), olds)
        {
            for (c, o) in cs.iter_mut().zip(olds) {
                if let (Some(c), Some(img)) = (c.as_object_mut(), o.get("image")) {
                    c.insert("image".into(), img.clone());
                }
            }
        }
    }
    // Scheduling gates may only be removed; while a pod is gated its nodeSelector may
    // gain entries and its node affinity may change (kube's mutable scheduling directives).
    let old_gates = old_spec
        .get("schedulingGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_gates = new_spec
        .get("schedulingGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(added) = new_gates.iter().find(|g| !old_gates.contains(g)) {
        let mut errs = FieldErrors::default();
        errs.forbidden(
            "spec.schedulingGates",
            &format!(
                "only deletion is allowed, but found new scheduling gate '{}'",
                added.get("name").and_then(Value::as_str).unwrap_or("")
            ),
        );
        let name = objects::meta(old)
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return errs.into_result("Pod", name, "");
    }
    let restore = |comparable: &mut Value, f: &str| match old_spec.get(f) {
        Some(v) => comparable[f] = v.clone(),
        None => {
            if let Some(o) = comparable.as_object_mut() {
                o.remove(f);
            }
        }
    };
    for f in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
        "schedulingGates",
    ] {
        restore(&mut comparable, f);
    }
    if !old_gates.is_empty() {
        let kept = |o: &Value, n: &Value| {
            o.as_object()
                .is_none_or(|o| o.iter().all(|(k, v)| n.get(k).is_some_and(|nv| nv == v)))
        };
        if kept(
            old_spec.get("nodeSelector").unwrap_or(&Value::Null),
            new_spec.get("nodeSelector").unwrap_or(&Value::Null),
        ) {
            restore(&mut comparable, "nodeSelector");
        }
        let node_affinity = |s: &Value| s.pointer("/affinity/nodeAffinity").cloned();
        if node_affinity(old_spec) != node_affinity(new_spec) {
            match (
                comparable
                    .get_mut("affinity")
                    .and_then(Value::as_object_mut),
                node_affinity(old_spec),
            ) {
                (Some(a), Some(na)) => {
                    a.insert("nodeAffinity".into(), na);
                }
                (Some(a), None) => {
                    a.remove("nodeAffinity");
                }
                (None, _) => {}
            }
            if comparable
                .get("affinity")
                .and_then(Value::as_object)
                .is_some_and(|a| a.is_empty())
                && old_spec.get("affinity").is_none()
            {
                if let Some(o) = comparable.as_object_mut() {
                    o.remove("affinity");
                }
            }
        }
    }
    // Binding happens through pods/binding only; a plain update keeps the stored node.
    if let Some(node) = old_spec.get("nodeName") {
        comparable["nodeName"] = node.clone();
        new["spec"]["nodeName"] = node.clone();
    }
    if &comparable != old_spec {
        let mut errs = FieldErrors::default();
        errs.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
        let name = objects::meta(old)
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        errs.into_result("Pod", name, "")?;
    }
    Ok(())
}

fn validate_container(c: &Value, path: &str, names: &mut Vec<String>, errs: &mut FieldErrors) {
    match c.get("name").and_then(Value::as_str) {
        None | Some("") => errs.required(format!("{path}.name"), ""),
        Some(n) if !validation::dns1123_label(n) => {
            errs.invalid(format!("{path}.name"), &json!(n), validation::LABEL_MSG)
        }
        Some(n) if names.iter().any(|x| x == n) => {
            errs.duplicate(format!("{path}.name"), &json!(n))
        }
        Some(n) => names.push(n.to_string()),
    }
    if c.get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.required(format!("{path}.image"), "");
    }
    if let Some(p) = c.get("imagePullPolicy") {
        if !matches!(p.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
            errs.not_supported(
                format!("{path}.imagePullPolicy"),
                p,
                &["Always", "IfNotPresent", "Never"],
            );
        }
    }
    if let Some(ports) = c.get("ports").and_then(Value::as_array) {
        for (i, p) in ports.iter().enumerate() {
            let at = format!("{path}.ports[{i}]");
            match p.get("containerPort").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => errs.invalid(
                    format!("{at}.containerPort"),
                    &json!(n),
                    "must be between 1 and 65535, inclusive",
                ),
                None => errs.required(format!("{at}.containerPort"), ""),
            }
            if let Some(proto) = p.get("protocol") {
                if !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP")) {
                    errs.not_supported(format!("{at}.protocol"), proto, &["SCTP", "TCP", "UDP"]);
                }
            }
        }
    }
}

/// The checks kube-apiserver makes that matter for running a pod.
pub fn validate(pod: &Value, _old: Option<&Value>, errs: &mut FieldErrors) {
    match pod.get("spec") {
        Some(spec) => validate_spec(spec, "spec", errs),
        None => errs.required("spec", ""),
    }
}

/// A pod spec's checks, at `at` (`spec`, or `spec.template.spec` in a workload).
pub fn validate_spec(spec: &Value, at: &str, errs: &mut FieldErrors) {
    let mut names = Vec::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                validate_container(c, &format!("{at}.containers[{i}]"), &mut names, errs);
            }
        }
        _ => errs.required(format!("{at}.containers"), ""),
    }
    if let Some(cs) = spec.get("initContainers").and_then(Value::as_array) {
        for (i, c) in cs.iter().enumerate() {
            validate_container(c, &format!("{at}.initContainers[{i}]"), &mut names, errs);
        }
    }
    if let Some(p) = spec.get("restartPolicy") {
        if !matches!(p.as_str(), Some("Always" | "OnFailure" | "Never")) {
            errs.not_supported(
                format!("{at}.restartPolicy"),
                p,
                &["Always", "OnFailure", "Never"],
            );
        }
    }
    if let Some(p) = spec.get("dnsPolicy") {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !p.as_str().is_some_and(|s| ok.contains(&s)) {
            errs.not_supported(format!("{at}.dnsPolicy"), p, &ok);
        }
    }
    let mut volumes = Vec::new();
    if let Some(vs) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in vs.iter().enumerate() {
            match v.get("name").and_then(Value::as_str) {
                None | Some("") => errs.required(format!("{at}.volumes[{i}].name"), ""),
                Some(n) if volumes.contains(&n) => {
                    errs.duplicate(format!("{at}.volumes[{i}].name"), &json!(n))
                }
                Some(n) => volumes.push(n),
            }
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !volumes.contains(&n) {
                    errs.not_found_volume(format!("{at}.{list}[{i}].volumeMounts[{j}].name"), n);
                }
                if m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.required(format!("{at}.{list}[{i}].volumeMounts[{j}].mountPath"), "");
                }
            }
        }
    }
}

/// pods/binding: assigns the pod to a node once, recording the PodScheduled condition.
pub fn bind(pod: &mut Value, node: &str) -> Result<(), ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict("", "pods", &name).with_message(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => {
            return Err(ApiError::conflict("", "pods", &name).with_message(format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{n}\""
            )))
        }
        _ => {}
    }
    pod["spec"]["nodeName"] = json!(node);
    let cond = json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": objects::now_rfc3339(),
    });
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let conds = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    if let Some(Value::Array(cs)) = conds {
        cs.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
        cs.push(cond);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_admission_match_kube() {
        let mut p = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        default(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert!(p["spec"].get("tolerations").is_none());
        admit(&mut p);
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            TOKEN_MOUNT
        );
        assert_eq!(pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(pull_policy("localhost:5000/busybox"), "Always");
    }

    #[test]
    fn qos_classes() {
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn updates_may_change_only_images() {
        let mut old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        default(&mut old);
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b");
        assert!(prepare_update(&old, &mut new).is_ok());
        new["spec"]["restartPolicy"] = json!("Never");
        let e = prepare_update(&old, &mut new).unwrap_err();
        assert!(e
            .message
            .contains("spec: Forbidden: pod updates may not change fields"));
    }

    #[test]
    fn binding_is_once() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        bind(&mut p, "n1").unwrap();
        assert_eq!(p["spec"]["nodeName"], "n1");
        assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
        let e = bind(&mut p, "n2").unwrap_err();
        assert_eq!(e.code.as_u16(), 409);
    }
}
