//! The columns and cells kube-apiserver's printers produce for each built-in kind
//! (pkg/printers/internalversion), as kubectl shows them.
use serde_json::{json, Value};

use super::super::resources::Resource;
use super::{age, age_of, col, int, wide, Column};

type Cells = fn(&Value) -> Vec<Value>;

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

fn arr<'a>(o: &'a Value, ptr: &str) -> &'a [Value] {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() {
        "<none>".to_string()
    } else {
        v
    })
}

/// `app=web,tier=front` of a map selector.
fn map_selector(m: Option<&Value>) -> String {
    m.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A metav1.LabelSelector as kubectl prints it.
fn label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut parts = vec![map_selector(sel.get("matchLabels"))];
    for e in arr(sel, "/matchExpressions") {
        let key = s(e, "/key");
        let values: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        parts.push(match s(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => String::new(),
        });
    }
    parts.retain(|p| !p.is_empty());
    parts.join(",")
}

fn containers_images(o: &Value, spec: &str) -> (Value, Value) {
    let cs = arr(o, &format!("{spec}/containers"));
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

fn pod_status(pod: &Value) -> (String, i64, usize, usize, Option<String>) {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let init_specs = arr(pod, "/spec/initContainers").len();
    let mut restarts = 0;
    let mut last_restart: Option<String> = None;
    let mut note_restart = |c: &Value| {
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
        {
            if last_restart.as_deref().is_none_or(|l| t > l) {
                last_restart = Some(t.to_string());
            }
        }
    };
    let mut initializing = false;
    for (idx, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        restarts += i(c, "/restartCount");
        note_restart(c);
        let term = c.pointer("/state/terminated");
        if term.is_some_and(|t| i(t, "/exitCode") == 0) {
            continue;
        }
        if c.get("started") == Some(&json!(true)) && c.pointer("/state/running").is_some() {
            // A sidecar that is up lets initialization go on.
            continue;
        }
        initializing = true;
        reason = match term {
            Some(t) if !s(t, "/reason").is_empty() => format!("Init:{}", s(t, "/reason")),
            Some(t) if i(t, "/signal") != 0 => format!("Init:Signal:{}", i(t, "/signal")),
            Some(t) => format!("Init:ExitCode:{}", i(t, "/exitCode")),
            None => match s(c, "/state/waiting/reason") {
                r if !r.is_empty() && r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{idx}/{init_specs}"),
            },
        };
        break;
    }
    let total = arr(pod, "/spec/containers").len();
    let mut ready = 0;
    if !initializing {
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += i(c, "/restartCount");
            note_restart(c);
            let waiting = s(c, "/state/waiting/reason");
            let term = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = term {
                reason = match s(t, "/reason") {
                    r if !r.is_empty() => r.to_string(),
                    _ if i(t, "/signal") != 0 => format!("Signal:{}", i(t, "/signal")),
                    _ => format!("ExitCode:{}", i(t, "/exitCode")),
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (reason, restarts, ready, total, last_restart)
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let (status, restarts, ready, total, last) = pod_status(pod);
    let restarts = match last {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age_of(Some(&t))),
        _ => restarts.to_string(),
    };
    let gates = arr(pod, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(pod, "/status/conditions");
        let true_count = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        name(pod),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(pod)),
        or_none(s(pod, "/status/podIP").to_string()),
        or_none(s(pod, "/spec/nodeName").to_string()),
        or_none(s(pod, "/status/nominatedNodeName").to_string()),
        json!(gates),
    ]
}

fn service_cells(svc: &Value) -> Vec<Value> {
    let ty = s(svc, "/spec/type");
    let cluster_ip = match s(svc, "/spec/clusterIP") {
        "" => "<none>".to_string(),
        ip => ip.to_string(),
    };
    let mut external: Vec<String> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let external = match ty {
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            for ing in arr(svc, "/status/loadBalancer/ingress") {
                let a = if s(ing, "/ip").is_empty() {
                    s(ing, "/hostname")
                } else {
                    s(ing, "/ip")
                };
                external.push(a.to_string());
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| match i(p, "/nodePort") {
            0 => format!("{}/{}", i(p, "/port"), s(p, "/protocol")),
            n => format!("{}:{n}/{}", i(p, "/port"), s(p, "/protocol")),
        })
        .collect();
    vec![
        name(svc),
        json!(ty),
        json!(cluster_ip),
        json!(external),
        or_none(ports.join(",")),
        json!(age(svc)),
        or_none(map_selector(svc.pointer("/spec/selector"))),
    ]
}

fn node_cells(n: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    let ready = arr(n, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    status.push(match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".into(),
        _ => "NotReady".into(),
    });
    if n.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let addr = |t: &str| {
        arr(n, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_default()
    };
    vec![
        name(n),
        json!(status.join(",")),
        or_none(roles.join(",")),
        json!(age(n)),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        or_none(addr("InternalIP")),
        or_none(addr("ExternalIP")),
        json!(s(n, "/status/nodeInfo/osImage")),
        json!(s(n, "/status/nodeInfo/kernelVersion")),
        json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn deployment_cells(d: &Value) -> Vec<Value> {
    let (c, im) = containers_images(d, "/spec/template/spec");
    vec![
        name(d),
        json!(format!(
            "{}/{}",
            i(d, "/status/readyReplicas"),
            i(d, "/spec/replicas")
        )),
        json!(i(d, "/status/updatedReplicas")),
        json!(i(d, "/status/availableReplicas")),
        json!(age(d)),
        c,
        im,
        json!(label_selector(d.pointer("/spec/selector"))),
    ]
}

fn replicaset_cells(r: &Value) -> Vec<Value> {
    let (c, im) = containers_images(r, "/spec/template/spec");
    let selector = match r.pointer("/spec/selector") {
        Some(Value::Object(m))
            if !m.contains_key("matchLabels") && !m.contains_key("matchExpressions") =>
        {
            map_selector(r.pointer("/spec/selector"))
        }
        sel => label_selector(sel),
    };
    vec![
        name(r),
        json!(i(r, "/spec/replicas")),
        json!(i(r, "/status/replicas")),
        json!(i(r, "/status/readyReplicas")),
        json!(age(r)),
        c,
        im,
        json!(selector),
    ]
}

fn statefulset_cells(r: &Value) -> Vec<Value> {
    let (c, im) = containers_images(r, "/spec/template/spec");
    vec![
        name(r),
        json!(format!(
            "{}/{}",
            i(r, "/status/readyReplicas"),
            i(r, "/spec/replicas")
        )),
        json!(age(r)),
        c,
        im,
    ]
}

fn daemonset_cells(r: &Value) -> Vec<Value> {
    let (c, im) = containers_images(r, "/spec/template/spec");
    vec![
        name(r),
        json!(i(r, "/status/desiredNumberScheduled")),
        json!(i(r, "/status/currentNumberScheduled")),
        json!(i(r, "/status/numberReady")),
        json!(i(r, "/status/updatedNumberScheduled")),
        json!(i(r, "/status/numberAvailable")),
        or_none(map_selector(r.pointer("/spec/template/spec/nodeSelector"))),
        json!(age(r)),
        c,
        im,
        json!(label_selector(r.pointer("/spec/selector"))),
    ]
}

fn job_cells(j: &Value) -> Vec<Value> {
    let (c, im) = containers_images(j, "/spec/template/spec");
    let conds = arr(j, "/status/conditions");
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if j.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if j.pointer("/spec/suspend") == Some(&json!(true)) {
        "Suspended"
    } else {
        "Running"
    };
    let completions = match j.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(n) => format!("{}/{n}", i(j, "/status/succeeded")),
        None => {
            let p = i(j, "/spec/parallelism");
            if p > 1 {
                format!("{}/1 of {p}", i(j, "/status/succeeded"))
            } else {
                format!("{}/1", i(j, "/status/succeeded"))
            }
        }
    };
    let duration = match (
        j.pointer("/status/startTime").and_then(Value::as_str),
        j.pointer("/status/completionTime").and_then(Value::as_str),
    ) {
        (Some(start), Some(end)) => {
            let f = time::format_description::well_known::Rfc3339;
            match (
                time::OffsetDateTime::parse(start, &f),
                time::OffsetDateTime::parse(end, &f),
            ) {
                (Ok(a), Ok(b)) => super::human_duration((b - a).whole_seconds()),
                _ => String::new(),
            }
        }
        (Some(start), None) => age_of(Some(start)),
        _ => String::new(),
    };
    vec![
        name(j),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(j)),
        c,
        im,
        json!(label_selector(j.pointer("/spec/selector"))),
    ]
}

fn cronjob_cells(j: &Value) -> Vec<Value> {
    let (c, im) = containers_images(j, "/spec/jobTemplate/spec/template/spec");
    let last = j
        .pointer("/status/lastScheduleTime")
        .and_then(Value::as_str)
        .map(|t| age_of(Some(t)))
        .unwrap_or_else(|| "<none>".into());
    vec![
        name(j),
        json!(s(j, "/spec/schedule")),
        or_none(s(j, "/spec/timeZone").to_string()),
        json!(if j.pointer("/spec/suspend") == Some(&json!(true)) {
            "True"
        } else {
            "False"
        }),
        json!(arr(j, "/status/active").len()),
        json!(last),
        json!(age(j)),
        c,
        im,
        json!(label_selector(j.pointer("/spec/jobTemplate/spec/selector"))),
    ]
}

fn endpoints_cells(e: &Value) -> Vec<Value> {
    let mut list = Vec::new();
    for subset in arr(e, "/subsets") {
        let ports: Vec<i64> = arr(subset, "/ports")
            .iter()
            .map(|p| i(p, "/port"))
            .collect();
        for a in arr(subset, "/addresses") {
            if ports.is_empty() {
                list.push(s(a, "/ip").to_string());
            }
            for p in &ports {
                list.push(format!("{}:{p}", s(a, "/ip")));
            }
        }
    }
    let shown = if list.len() > 3 {
        format!("{} + {} more...", list[..3].join(","), list.len() - 3)
    } else {
        list.join(",")
    };
    vec![name(e), or_none(shown), json!(age(e))]
}

fn event_cells(e: &Value) -> Vec<Value> {
    let last = [
        "/lastTimestamp",
        "/eventTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| e.pointer(p).and_then(Value::as_str))
    .map(|t| age_of(Some(t)))
    .unwrap_or_else(|| "<unknown>".into());
    let object = format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    );
    let source = match (s(e, "/source/component"), s(e, "/source/host")) {
        ("", _) => s(e, "/reportingComponent").to_string(),
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    };
    let first = e
        .pointer("/firstTimestamp")
        .and_then(Value::as_str)
        .map(|t| age_of(Some(t)))
        .unwrap_or_else(|| "<unknown>".into());
    vec![
        json!(last),
        json!(s(e, "/type")),
        json!(s(e, "/reason")),
        json!(object),
        json!(s(e, "/message").trim()),
        json!(s(e, "/involvedObject/fieldPath")),
        json!(source),
        json!(first),
        json!(e.get("count").and_then(Value::as_i64).unwrap_or(1)),
        name(e),
    ]
}

fn created_at(o: &Value) -> Vec<Value> {
    vec![name(o), json!(s(o, "/metadata/creationTimestamp"))]
}

fn name_age(o: &Value) -> Vec<Value> {
    vec![name(o), json!(age(o))]
}

fn binding_cells(b: &Value) -> Vec<Value> {
    let subjects = arr(b, "/subjects");
    let of = |kind: &str| {
        subjects
            .iter()
            .filter(|x| s(x, "/kind") == kind)
            .map(|x| {
                if kind == "ServiceAccount" {
                    format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                } else {
                    s(x, "/name").to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        name(b),
        json!(format!(
            "{}/{}",
            s(b, "/roleRef/kind"),
            s(b, "/roleRef/name")
        )),
        json!(age(b)),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

/// The columns and the cell function of a resource.
pub fn printer(r: &Resource) -> (Vec<Column>, Cells) {
    const NAME: Column = col("Name");
    const AGE: Column = col("Age");
    match (r.group, r.plural) {
        ("", "pods") => (
            vec![
                NAME,
                col("Ready"),
                col("Status"),
                col("Restarts"),
                AGE,
                wide("IP"),
                wide("Node"),
                wide("Nominated Node"),
                wide("Readiness Gates"),
            ],
            pod_cells,
        ),
        ("", "services") => (
            vec![
                NAME,
                col("Type"),
                col("Cluster-IP"),
                col("External-IP"),
                col("Port(s)"),
                AGE,
                wide("Selector"),
            ],
            service_cells,
        ),
        ("", "nodes") => (
            vec![
                NAME,
                col("Status"),
                col("Roles"),
                AGE,
                col("Version"),
                wide("Internal-IP"),
                wide("External-IP"),
                wide("OS-Image"),
                wide("Kernel-Version"),
                wide("Container-Runtime"),
            ],
            node_cells,
        ),
        ("", "namespaces") => (vec![NAME, col("Status"), AGE], |o| {
            vec![name(o), json!(s(o, "/status/phase")), json!(age(o))]
        }),
        ("", "configmaps") => (vec![NAME, int("Data"), AGE], |o| {
            let n = ["/data", "/binaryData"]
                .iter()
                .filter_map(|p| o.pointer(p).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name(o), json!(n), json!(age(o))]
        }),
        ("", "secrets") => (vec![NAME, col("Type"), int("Data"), AGE], |o| {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0);
            vec![name(o), json!(s(o, "/type")), json!(n), json!(age(o))]
        }),
        ("", "serviceaccounts") => (vec![NAME, int("Secrets"), AGE], |o| {
            vec![name(o), json!(arr(o, "/secrets").len()), json!(age(o))]
        }),
        ("", "endpoints") => (vec![NAME, col("Endpoints"), AGE], endpoints_cells),
        ("" | "events.k8s.io", "events") => (
            vec![
                col("Last Seen"),
                col("Type"),
                col("Reason"),
                col("Object"),
                col("Message"),
                wide("Subobject"),
                wide("Source"),
                wide("First Seen"),
                Column {
                    name: "Count",
                    ty: "integer",
                    priority: 1,
                },
                wide("Name"),
            ],
            if r.group.is_empty() {
                event_cells
            } else {
                |o| event_cells(&crate::apiserver::strategy::event::to_core(o))
            },
        ),
        ("", "replicationcontrollers") | ("apps", "replicasets") => (
            vec![
                NAME,
                int("Desired"),
                int("Current"),
                int("Ready"),
                AGE,
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            replicaset_cells,
        ),
        ("", "persistentvolumeclaims") => (
            vec![
                NAME,
                col("Status"),
                col("Volume"),
                col("Capacity"),
                col("Access Modes"),
                col("StorageClass"),
                col("VolumeAttributesClass"),
                AGE,
                wide("VolumeMode"),
            ],
            |o| {
                let modes = access_modes(arr(o, "/status/accessModes"));
                vec![
                    name(o),
                    json!(s(o, "/status/phase")),
                    json!(s(o, "/spec/volumeName")),
                    json!(s(o, "/status/capacity/storage")),
                    json!(modes),
                    json!(s(o, "/spec/storageClassName")),
                    or_unset(s(o, "/spec/volumeAttributesClassName")),
                    json!(age(o)),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("", "persistentvolumes") => (
            vec![
                NAME,
                col("Capacity"),
                col("Access Modes"),
                col("Reclaim Policy"),
                col("Status"),
                col("Claim"),
                col("StorageClass"),
                col("VolumeAttributesClass"),
                col("Reason"),
                AGE,
                wide("VolumeMode"),
            ],
            |o| {
                let claim = if s(o, "/spec/claimRef/name").is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}/{}",
                        s(o, "/spec/claimRef/namespace"),
                        s(o, "/spec/claimRef/name")
                    )
                };
                vec![
                    name(o),
                    json!(s(o, "/spec/capacity/storage")),
                    json!(access_modes(arr(o, "/spec/accessModes"))),
                    json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(o, "/status/phase")),
                    json!(claim),
                    json!(s(o, "/spec/storageClassName")),
                    or_unset(s(o, "/spec/volumeAttributesClassName")),
                    json!(s(o, "/status/reason")),
                    json!(age(o)),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("", "resourcequotas") => (vec![NAME, AGE, col("Request"), col("Limit")], |o| {
            let pairs = |kind: &str| {
                let hard = o.pointer("/status/hard").and_then(Value::as_object);
                let used = o.pointer("/status/used").and_then(Value::as_object);
                let mut keys: Vec<&String> = hard
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| (kind == "limits") == k.starts_with("limits."))
                    .collect();
                keys.sort();
                keys.iter()
                    .map(|k| {
                        format!(
                            "{k}: {}/{}",
                            used.and_then(|u| u.get(*k))
                                .and_then(Value::as_str)
                                .unwrap_or("0"),
                            hard.and_then(|h| h.get(*k))
                                .and_then(Value::as_str)
                                .unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name(o),
                json!(age(o)),
                json!(pairs("requests")),
                json!(pairs("limits")),
            ]
        }),
        ("", "limitranges")
        | ("rbac.authorization.k8s.io", "roles" | "clusterroles")
        | ("apiextensions.k8s.io", _) => (vec![NAME, col("Created At")], created_at),
        ("apps", "deployments") => (
            vec![
                NAME,
                col("Ready"),
                int("Up-to-date"),
                int("Available"),
                AGE,
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            deployment_cells,
        ),
        ("apps", "statefulsets") => (
            vec![NAME, col("Ready"), AGE, wide("Containers"), wide("Images")],
            statefulset_cells,
        ),
        ("apps", "daemonsets") => (
            vec![
                NAME,
                int("Desired"),
                int("Current"),
                int("Ready"),
                int("Up-to-date"),
                int("Available"),
                col("Node Selector"),
                AGE,
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            daemonset_cells,
        ),
        ("apps", "controllerrevisions") => {
            (vec![NAME, col("Controller"), int("Revision"), AGE], |o| {
                let owner = arr(o, "/metadata/ownerReferences")
                    .iter()
                    .find(|r| r.get("controller") == Some(&json!(true)));
                let ctl = owner
                    .map(|r| format!("{}/{}", s(r, "/kind").to_lowercase(), s(r, "/name")))
                    .unwrap_or_else(|| "<none>".into());
                vec![name(o), json!(ctl), json!(i(o, "/revision")), json!(age(o))]
            })
        }
        ("batch", "jobs") => (
            vec![
                NAME,
                col("Status"),
                col("Completions"),
                col("Duration"),
                AGE,
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            job_cells,
        ),
        ("batch", "cronjobs") => (
            vec![
                NAME,
                col("Schedule"),
                col("Timezone"),
                col("Suspend"),
                int("Active"),
                col("Last Schedule"),
                AGE,
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            cronjob_cells,
        ),
        ("coordination.k8s.io", "leases") => (vec![NAME, col("Holder"), AGE], |o| {
            vec![name(o), json!(s(o, "/spec/holderIdentity")), json!(age(o))]
        }),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![
                NAME,
                col("Role"),
                AGE,
                wide("Users"),
                wide("Groups"),
                wide("ServiceAccounts"),
            ],
            binding_cells,
        ),
        ("apiregistration.k8s.io", "apiservices") => (
            super::server_groups::api_service_columns(),
            super::server_groups::api_service_cells,
        ),
        ("flowcontrol.apiserver.k8s.io", "flowschemas") => (
            super::server_groups::flow_schema_columns(),
            super::server_groups::flow_schema_cells,
        ),
        ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations") => (
            super::server_groups::priority_level_columns(),
            super::server_groups::priority_level_cells,
        ),
        ("scheduling.k8s.io", "priorityclasses") => (
            vec![
                NAME,
                int("Value"),
                col("Global-Default"),
                AGE,
                col("PreemptionPolicy"),
            ],
            |o| {
                let global = o
                    .get("globalDefault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                vec![
                    name(o),
                    json!(i(o, "/value")),
                    json!(global),
                    json!(age(o)),
                    json!(s(o, "/preemptionPolicy")),
                ]
            },
        ),
        ("storage.k8s.io", "storageclasses") => (
            vec![
                NAME,
                col("Provisioner"),
                col("ReclaimPolicy"),
                col("VolumeBindingMode"),
                col("AllowVolumeExpansion"),
                AGE,
            ],
            |o| {
                let mut n = s(o, "/metadata/name").to_string();
                if s(
                    o,
                    "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
                ) == "true"
                {
                    n.push_str(" (default)");
                }
                vec![
                    json!(n),
                    json!(s(o, "/provisioner")),
                    json!(if s(o, "/reclaimPolicy").is_empty() {
                        "Delete"
                    } else {
                        s(o, "/reclaimPolicy")
                    }),
                    json!(if s(o, "/volumeBindingMode").is_empty() {
                        "Immediate"
                    } else {
                        s(o, "/volumeBindingMode")
                    }),
                    json!(o
                        .get("allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)),
                    json!(age(o)),
                ]
            },
        ),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                NAME,
                col("AddressType"),
                col("Ports"),
                col("Endpoints"),
                AGE,
            ],
            |o| {
                let ports: Vec<String> = arr(o, "/ports")
                    .iter()
                    .map(|p| i(p, "/port").to_string())
                    .collect();
                let addrs: Vec<String> = arr(o, "/endpoints")
                    .iter()
                    .flat_map(|e| {
                        arr(e, "/addresses")
                            .iter()
                            .filter_map(|a| a.as_str().map(String::from))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let shown = if addrs.len() > 3 {
                    format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
                } else {
                    addrs.join(",")
                };
                vec![
                    name(o),
                    json!(s(o, "/addressType")),
                    or_unset_list(ports.join(",")),
                    or_unset_list(shown),
                    json!(age(o)),
                ]
            },
        ),
        ("networking.k8s.io", "ingresses") => (
            vec![
                NAME,
                col("Class"),
                col("Hosts"),
                col("Address"),
                col("Ports"),
                AGE,
            ],
            |o| {
                let hosts: Vec<&str> = arr(o, "/spec/rules")
                    .iter()
                    .map(|r| s(r, "/host"))
                    .filter(|h| !h.is_empty())
                    .collect();
                let addrs: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|a| {
                        if s(a, "/ip").is_empty() {
                            s(a, "/hostname")
                        } else {
                            s(a, "/ip")
                        }
                    })
                    .collect();
                let ports = if arr(o, "/spec/tls").is_empty() {
                    "80"
                } else {
                    "80, 443"
                };
                vec![
                    name(o),
                    or_none(s(o, "/spec/ingressClassName").to_string()),
                    json!(if hosts.is_empty() {
                        "*".to_string()
                    } else {
                        hosts.join(",")
                    }),
                    json!(addrs.join(",")),
                    json!(ports),
                    json!(age(o)),
                ]
            },
        ),
        ("networking.k8s.io", "networkpolicies") => (vec![NAME, col("Pod-Selector"), AGE], |o| {
            vec![
                name(o),
                json!(label_selector(o.pointer("/spec/podSelector"))),
                json!(age(o)),
            ]
        }),
        ("policy", "poddisruptionbudgets") => (
            vec![
                NAME,
                col("Min Available"),
                col("Max Unavailable"),
                int("Allowed Disruptions"),
                AGE,
            ],
            |o| {
                let show = |p: &str| match o.pointer(p) {
                    Some(Value::String(x)) => x.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "N/A".into(),
                };
                vec![
                    name(o),
                    json!(show("/spec/minAvailable")),
                    json!(show("/spec/maxUnavailable")),
                    json!(i(o, "/status/disruptionsAllowed")),
                    json!(age(o)),
                ]
            },
        ),
        ("autoscaling", "horizontalpodautoscalers") => (
            vec![
                NAME,
                col("Reference"),
                col("Targets"),
                int("MinPods"),
                int("MaxPods"),
                int("Replicas"),
                AGE,
            ],
            |o| {
                let reference = format!(
                    "{}/{}",
                    s(o, "/spec/scaleTargetRef/kind"),
                    s(o, "/spec/scaleTargetRef/name")
                );
                let min = o
                    .pointer("/spec/minReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                vec![
                    name(o),
                    json!(reference),
                    json!("<unknown>"),
                    json!(min),
                    json!(i(o, "/spec/maxReplicas")),
                    json!(i(o, "/status/currentReplicas")),
                    json!(age(o)),
                ]
            },
        ),
        ("certificates.k8s.io", "certificatesigningrequests") => (
            vec![
                NAME,
                AGE,
                col("SignerName"),
                col("Requestor"),
                col("RequestedDuration"),
                col("Condition"),
            ],
            |o| {
                let conds: Vec<&str> = arr(o, "/status/conditions")
                    .iter()
                    .map(|c| s(c, "/type"))
                    .collect();
                let cond = if conds.is_empty() {
                    "Pending".to_string()
                } else {
                    conds.join(",")
                };
                let dur = o
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map(super::human_duration)
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    name(o),
                    json!(age(o)),
                    json!(s(o, "/spec/signerName")),
                    json!(s(o, "/spec/username")),
                    json!(dur),
                    json!(cond),
                ]
            },
        ),
        _ => (vec![NAME, AGE], name_age),
    }
}

fn access_modes(modes: &[Value]) -> String {
    modes
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_unset(v: &str) -> Value {
    json!(if v.is_empty() { "<unset>" } else { v })
}

fn or_unset_list(v: String) -> Value {
    json!(if v.is_empty() {
        "<unset>".to_string()
    } else {
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_reads_like_kubectl() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let cells = pod_cells(&p);
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        let init = json!({"spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}});
        assert_eq!(pod_cells(&init)[2], "Init:0/1");
    }

    #[test]
    fn services_print_ports_and_addresses() {
        let s = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let c = service_cells(&s);
        assert_eq!(c[2], "10.43.0.5");
        assert_eq!(c[3], "<none>");
        assert_eq!(c[4], "80:30080/TCP");
        assert_eq!(c[6], "app=web");
    }
}
