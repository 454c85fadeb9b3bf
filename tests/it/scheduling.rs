//! The scheduler in `krab server --disable-agent`, against Node objects registered by the
//! test (2 cpu each, zones z1 = {a, b}, z2 = {c}): topology spreading, pod anti-affinity,
//! host ports, volume node affinity and missing claims, scheduling gates, and preemption by
//! priority with a PodDisruptionBudget in the way — each with kube's wording for why a pod
//! waits. The test plays the kubelet: it reports pods ready and finishes their leaving.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{wait_for, write, Server};
use crate::workloads::register_node;

fn cluster(dir: &std::path::Path) -> Server {
    let s = Server::start(&dir.join("d"), &[]);
    register_node(&s, dir, "a", ", zone: z1");
    register_node(&s, dir, "b", ", zone: z1");
    register_node(&s, dir, "c", ", zone: z2");
    s
}

/// `pod name → node` for pods with this label selector, waiting until `n` are bound.
fn bound(s: &Server, selector: &str, n: usize) -> BTreeMap<String, String> {
    wait_for(
        &format!("{n} pods of {selector} bound"),
        Duration::from_secs(30),
        || {
            let out = s.kube_ok(&["get", "pods", "-l", selector, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let placed: BTreeMap<String, String> = v["items"]
                .as_array()?
                .iter()
                .filter_map(|p| {
                    Some((
                        p["metadata"]["name"].as_str()?.to_string(),
                        p["spec"]["nodeName"].as_str()?.to_string(),
                    ))
                })
                .collect();
            (placed.len() == n).then_some(placed)
        },
    )
}

/// The PodScheduled=False message of a pod, once it has one.
fn why_pending(s: &Server, pod: &str) -> String {
    wait_for(
        &format!("{pod}'s PodScheduled message"),
        Duration::from_secs(30),
        || {
            let m = s.kube_ok(&[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
            ]);
            (!m.is_empty()).then_some(m)
        },
    )
}

fn deployment(name: &str, replicas: u32, spec_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{spec_extra}      containers: [{{name: c, image: busybox}}]\n"
    )
}

#[test]
fn spreading_affinity_ports_volumes_and_gates() {
    let dir = tempfile::tempdir().unwrap();
    let s = cluster(dir.path());

    // Zone spreading, maxSkew 1: four replicas go two to each zone although z1 has two
    // nodes and z2 one.
    let spread = deployment(
        "spread",
        4,
        "      topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}]\n",
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "spread.yaml", &spread)]);
    let placed = bound(&s, "app=spread", 4);
    let in_z2 = placed.values().filter(|n| *n == "c").count();
    assert_eq!(in_z2, 2, "two of four in zone z2: {placed:?}");

    // Required anti-affinity by hostname: one per node, and a fourth has nowhere to go.
    let anti = deployment(
        "solo",
        4,
        "      affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: solo}}, topologyKey: kubernetes.io/hostname}]}}\n",
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "solo.yaml", &anti)]);
    let placed = wait_for("three solo pods bound", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pods",
            "-l",
            "app=solo",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\" \"}{end}",
        ]);
        let nodes: Vec<String> = out.split_whitespace().map(String::from).collect();
        (nodes.len() == 3).then_some(nodes)
    });
    let mut sorted = placed.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"]);
    let pending = wait_for("the pending solo pod", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pods",
            "-l",
            "app=solo",
            "--field-selector=status.phase=Pending",
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|p| p["spec"]["nodeName"].is_null())
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
    });
    assert_eq!(
        why_pending(&s, &pending),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.."
    );

    // Host ports: two pods pinned to node a asking for the same port.
    let port_pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: a}}\n  containers: [{{name: c, image: busybox, ports: [{{containerPort: 80, hostPort: 8080}}]}}]\n")
    };
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "p1.yaml", &port_pod("port1")),
    ]);
    bound(&s, "!app", 1);
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "p2.yaml", &port_pod("port2")),
    ]);
    assert_eq!(
        why_pending(&s, "port2"),
        "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.."
    );
    // The port is freed when its holder goes: the waiting pod is woken and placed.
    s.kube_ok(&["delete", "pod", "port1", "--grace-period=0", "--force"]);
    wait_for("port2 bound to a", Duration::from_secs(30), || {
        let n = s.kube_ok(&["get", "pod", "port2", "-o", "jsonpath={.spec.nodeName}"]);
        (n == "a").then_some(())
    });

    // A claim bound to a volume with node affinity pins the pod to that node; a missing
    // claim keeps it off every node.
    let volumes = "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-b}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n  hostPath: {path: /tmp/pv-b}\n  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [b]}]}]}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: \"\"\n  volumeName: pv-b\n  resources: {requests: {storage: 1Gi}}\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pv.yaml", volumes)]);
    let claimant = |name: &str, claim: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n  volumes: [{{name: v, persistentVolumeClaim: {{claimName: {claim}}}}}]\n")
    };
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "c1.yaml", &claimant("claimant", "data")),
    ]);
    let node = wait_for("claimant bound", Duration::from_secs(30), || {
        let n = s.kube_ok(&["get", "pod", "claimant", "-o", "jsonpath={.spec.nodeName}"]);
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(node, "b");
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "c2.yaml", &claimant("orphan", "nope")),
    ]);
    assert_eq!(
        why_pending(&s, "orphan"),
        "0/3 nodes are available: persistentvolumeclaim \"nope\" not found. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.."
    );

    // Scheduling gates hold a pod until the last one is removed.
    let gated = "apiVersion: v1\nkind: Pod\nmetadata: {name: gated}\nspec:\n  schedulingGates: [{name: example.com/wait}]\n  containers: [{name: c, image: busybox}]\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "g.yaml", gated)]);
    let reason = wait_for(
        "the SchedulingGated reason",
        Duration::from_secs(30),
        || {
            let r = s.kube_ok(&[
                "get",
                "pod",
                "gated",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
            ]);
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(reason, "SchedulingGated");
    assert_eq!(
        s.kube_ok(&["get", "pod", "gated", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
    s.kube_ok(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#,
    ]);
    wait_for("the ungated pod bound", Duration::from_secs(30), || {
        let n = s.kube_ok(&["get", "pod", "gated", "-o", "jsonpath={.spec.nodeName}"]);
        (!n.is_empty()).then_some(())
    });
}

#[test]
fn preemption_evicts_the_least_important_pods_and_nominates_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = cluster(dir.path());
    let classes = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pc.yaml", classes)]);
    // Node c is full: a guarded low pod (its budget allows no disruption) and a plain low
    // pod, 1 cpu each.
    let low = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  priorityClassName: low\n  nodeSelector: {{kubernetes.io/hostname: c}}\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: '1'}}}}}}]\n")
    };
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "l1.yaml", &low("guarded")),
    ]);
    s.kube_ok(&["apply", "-f", &write(dir.path(), "l2.yaml", &low("plain"))]);
    bound(&s, "app in (guarded,plain)", 2);
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guard}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: guarded}}\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pdb.yaml", pdb)]);
    // The disruption controller finds the guarded pod healthy and needed: no disruption
    // allowed.
    crate::workloads::report_running(&s, "guarded", true);
    wait_for("the budget's status", Duration::from_secs(30), || {
        let st = s.kube_ok(&[
            "get",
            "pdb",
            "guard",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ]);
        (st == "1/0").then_some(())
    });
    // An equal-priority pod that does not fit preempts nothing.
    let peer = "apiVersion: v1\nkind: Pod\nmetadata: {name: peer}\nspec:\n  priorityClassName: low\n  nodeSelector: {kubernetes.io/hostname: c}\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '1'}}}]\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "peer.yaml", peer)]);
    assert_eq!(
        why_pending(&s, "peer"),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.."
    );
    s.kube_ok(&["delete", "pod", "peer", "--grace-period=0", "--force"]);

    // The high-priority pod needs one cpu on c: the unguarded pod is the victim.
    let vip = "apiVersion: v1\nkind: Pod\nmetadata: {name: vip}\nspec:\n  priorityClassName: high\n  nodeSelector: {kubernetes.io/hostname: c}\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '1'}}}]\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "vip.yaml", vip)]);
    wait_for("vip nominated to c", Duration::from_secs(30), || {
        let n = s.kube_ok(&[
            "get",
            "pod",
            "vip",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]);
        (n == "c").then_some(())
    });
    let victim = wait_for("the victim marked", Duration::from_secs(30), || {
        let out = s.kube_ok(&["get", "pods", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
    });
    assert_eq!(victim["metadata"]["name"], "plain");
    let conditions = victim["status"]["conditions"].as_array().unwrap();
    assert!(conditions
        .iter()
        .any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "PreemptionByScheduler"));
    let guarded = s.kube_ok(&[
        "get",
        "pod",
        "guarded",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert_eq!(guarded, "", "the budget protected its pod");
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.name=plain,reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("on node c"), "{events}");
    // Until the victim has gone the preemptor waits; then it takes the room.
    assert_eq!(
        s.kube_ok(&["get", "pod", "vip", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
    s.kube_ok(&["delete", "pod", "plain", "--grace-period=0", "--force"]);
    wait_for("vip bound to c", Duration::from_secs(30), || {
        let n = s.kube_ok(&["get", "pod", "vip", "-o", "jsonpath={.spec.nodeName}"]);
        (n == "c").then_some(())
    });
}
