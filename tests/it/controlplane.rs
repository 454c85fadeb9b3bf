//! The control-plane loops in `krab server --disable-agent`: Deployments make ReplicaSets,
//! ReplicaSets make pods, the scheduler binds them to a node, under leader Leases. The node
//! is registered and its pods marked ready by the test itself, as a kubelet would through
//! the same API (the agent issue brings the real one).
use std::time::Duration;

use crate::support::{wait_for, write, Server};

const NODE: &str =
    "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {kubernetes.io/hostname: n1}\n";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        resources: {requests: {cpu: 100m}}
";

fn register_node(s: &Server, dir: &std::path::Path) {
    crate::workloads::register_node(s, dir, "n1", "");
}

fn pods(s: &Server) -> Vec<serde_json::Value> {
    let out = s.kube_ok(&["get", "pods", "-l", "app=web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// What the kubelet would report for a running, ready pod.
fn mark_ready(s: &Server, pod: &str) {
    let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}],"containerStatuses":[{"name":"web","ready":true,"restartCount":0,"image":"busybox:1.36","imageID":"","started":true,"state":{"running":{}}}]}}"#;
    s.kube_ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
}

#[test]
fn deployments_become_replicasets_become_pods_bound_to_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path());
    let f = write(dir.path(), "d.yaml", DEPLOY);
    s.kube_ok(&["apply", "-f", &f]);
    let bound = wait_for("two pods bound to n1", Duration::from_secs(30), || {
        let p = pods(&s);
        let on_n1: Vec<String> = p
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "n1")
            .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (on_n1.len() == 2).then_some(on_n1)
    });
    let rs = s.kube_ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(rs.starts_with("web-"), "{rs}");
    assert!(
        bound.iter().all(|p| p.starts_with(&format!("{rs}-"))),
        "{bound:?} {rs}"
    );
    let owner = s.kube_ok(&[
        "get",
        "pod",
        &bound[0],
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, format!("ReplicaSet/{rs}"));
    let scheduled = s.kube_ok(&[
        "get",
        "pod",
        &bound[0],
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(scheduled, "True");
    // Ready pods (as a kubelet would report them) make the rollout complete.
    for p in &bound {
        mark_ready(&s, p);
    }
    let out = s.kube_ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let ready = s.kube_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}/{.status.availableReplicas}/{.status.updatedReplicas}",
    ]);
    assert_eq!(ready, "2/2/2");
    // A new template is a new ReplicaSet, revision 2, surging one pod at a time.
    s.kube_ok(&["set", "image", "deployment/web", "web=busybox:1.37"]);
    wait_for("a second ReplicaSet", Duration::from_secs(30), || {
        let names = s.kube_ok(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        (names.split_whitespace().count() == 2).then_some(())
    });
    let history = s.kube_ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // Scaling down removes pods.
    s.kube_ok(&["scale", "deployment/web", "--replicas=0"]);
    wait_for("no pods", Duration::from_secs(30), || {
        let live = pods(&s)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count();
        (live == 0).then_some(())
    });
    // Both loops hold their leases.
    let holders = s.kube_ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(
        holders.contains("kube-controller-manager") && holders.contains("kube-scheduler"),
        "{holders}"
    );
}

#[test]
fn a_pod_that_fits_nowhere_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path());
    s.kube_ok(&["run", "big", "--image=busybox", "--overrides", r#"{"spec":{"containers":[{"name":"big","image":"busybox","resources":{"requests":{"cpu":"16"}}}]}}"#]);
    let message = wait_for(
        "an Unschedulable condition",
        Duration::from_secs(30),
        || {
            let m = s.kube_ok(&[
                "get",
                "pod",
                "big",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
            ]);
            (!m.is_empty()).then_some(m)
        },
    );
    // kube's wording, preemption's part (and its double full stop) included.
    assert_eq!(
        message,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.."
    );
    // Node IPAM: each node its own /24 of --cluster-cidr.
    let cidr = wait_for("n1's pod CIDR", Duration::from_secs(30), || {
        let c = s.kube_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"]);
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(cidr, "10.42.0.0/24");
    let n2 = write(dir.path(), "n2.yaml", &NODE.replace("n1", "n2"));
    s.kube_ok(&["create", "-f", &n2]);
    let cidr = wait_for("n2's pod CIDR", Duration::from_secs(30), || {
        let c = s.kube_ok(&["get", "node", "n2", "-o", "jsonpath={.spec.podCIDRs[0]}"]);
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(cidr, "10.42.1.0/24");
    let reason = s.kube_ok(&[
        "get",
        "pod",
        "big",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(reason, "Unschedulable");
}

#[test]
fn loops_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("d"),
        &["--disable-scheduler", "--disable-controller", "deployment"],
    );
    register_node(&s, dir.path());
    let f = write(dir.path(), "d.yaml", DEPLOY);
    s.kube_ok(&["apply", "-f", &f]);
    let rs = write(
        dir.path(),
        "rs.yaml",
        &DEPLOY
            .replace("kind: Deployment", "kind: ReplicaSet")
            .replace("name: web\n", "name: lone\n"),
    );
    s.kube_ok(&["apply", "-f", &rs]);
    // The ReplicaSet controller still runs: the lone ReplicaSet gets pods, never bound.
    wait_for(
        "pods of the lone ReplicaSet",
        Duration::from_secs(30),
        || (pods(&s).len() == 2).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(pods(&s).iter().all(|p| p["spec"]["nodeName"].is_null()));
    assert!(s.kube_ok(&["get", "rs", "-o", "name"]).trim() == "replicaset.apps/lone");
}

fn readyz(s: &Server) -> (bool, String) {
    let out = s.kubectl(&["get", "--raw", "/readyz?verbose"]);
    let body = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), body)
}

#[test]
fn each_loop_acts_under_its_own_role_and_reports_on_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let (ready, body) = readyz(&s);
    assert!(ready, "{body}");
    for check in [
        "[+]controller/deployment ok",
        "[+]controller/replicaset ok",
        "[+]scheduler ok",
    ] {
        assert!(body.contains(check), "{body}");
    }
    // Each loop is a service account of kube-system bound to kube's controller role.
    let allowed = |group: &str, resource: &str| {
        let sar = format!(
            r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{{"user":"system:serviceaccount:kube-system:deployment-controller","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"],"resourceAttributes":{{"verb":"create","group":"{group}","resource":"{resource}","namespace":"default"}}}}}}"#
        );
        let f = write(dir.path(), "sar.json", &sar);
        // kubectl validates kinds without PATCH against /openapi/v2 in protobuf, which krab
        // does not serve yet.
        s.kube_ok(&[
            "create",
            "--validate=false",
            "-f",
            &f,
            "-o",
            "jsonpath={.status.allowed}",
        ])
    };
    assert_eq!(allowed("apps", "replicasets"), "true");
    assert_eq!(allowed("", "pods"), "false");

    // Without its binding the Deployment controller is refused, and says so on /readyz;
    // the other loops go on.
    let binding = s.kube_ok(&[
        "get",
        "clusterrolebinding",
        "system:controller:deployment-controller",
        "-o",
        "json",
    ]);
    s.kube_ok(&[
        "delete",
        "clusterrolebinding",
        "system:controller:deployment-controller",
    ]);
    register_node(&s, dir.path());
    s.kube_ok(&["apply", "-f", &write(dir.path(), "d.yaml", DEPLOY)]);
    let body = wait_for(
        "the deployment loop failing on /readyz",
        Duration::from_secs(90),
        || {
            let (ready, body) = readyz(&s);
            (!ready).then_some(body)
        },
    );
    assert!(body.contains("[-]controller/deployment failed"), "{body}");
    assert!(body.contains("[+]controller/replicaset ok"), "{body}");
    assert_eq!(s.kube_ok(&["get", "rs", "-o", "name"]).trim(), "");

    // Given its binding back, it catches up and the check passes again.
    let restored: serde_json::Value = serde_json::from_str(&binding).unwrap();
    let mut restored = restored;
    for f in ["resourceVersion", "uid", "creationTimestamp"] {
        restored["metadata"].as_object_mut().unwrap().remove(f);
    }
    s.kube_ok(&[
        "create",
        "-f",
        &write(dir.path(), "crb.json", &restored.to_string()),
    ]);
    wait_for("pods of the deployment", Duration::from_secs(60), || {
        (pods(&s).len() == 2).then_some(())
    });
    wait_for("readyz passing again", Duration::from_secs(30), || {
        readyz(&s).0.then_some(())
    });
}

#[test]
fn namespaces_get_defaults_and_are_emptied_when_deleted_and_owners_take_dependents_along() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["create", "namespace", "demo"]);
    wait_for(
        "the default ServiceAccount and root CA",
        Duration::from_secs(30),
        || {
            let out = s.kube_ok(&[
                "-n",
                "demo",
                "get",
                "sa/default",
                "cm/kube-root-ca.crt",
                "-o",
                "name",
                "--ignore-not-found",
            ]);
            (out.lines().count() == 2).then_some(())
        },
    );
    let ca = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        "cm",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    // Background deletion: the ReplicaSet and pods follow the Deployment.
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "d1",
        "--image=busybox",
        "--replicas=2",
    ]);
    wait_for("two pods", Duration::from_secs(30), || {
        (s.kube_ok(&["-n", "demo", "get", "pods", "-o", "name"])
            .lines()
            .count()
            == 2)
            .then_some(())
    });
    s.kube_ok(&["-n", "demo", "delete", "deployment", "d1"]);
    wait_for("the dependents gone", Duration::from_secs(30), || {
        let left = s.kube_ok(&["-n", "demo", "get", "rs,pods", "-o", "name"]);
        left.trim().is_empty().then_some(())
    });
    // Foreground: the owner goes last.
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "d2",
        "--image=busybox",
    ]);
    wait_for("a ReplicaSet", Duration::from_secs(30), || {
        (!s.kube_ok(&["-n", "demo", "get", "rs", "-o", "name"])
            .trim()
            .is_empty())
        .then_some(())
    });
    s.kube_ok(&[
        "-n",
        "demo",
        "delete",
        "deployment",
        "d2",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    assert!(s
        .kube_ok(&["-n", "demo", "get", "deploy,rs", "-o", "name"])
        .trim()
        .is_empty());
    // Orphan: the ReplicaSet stays, without its owner reference.
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "d3",
        "--image=busybox",
    ]);
    let rs = wait_for("a ReplicaSet", Duration::from_secs(30), || {
        let n = s.kube_ok(&["-n", "demo", "get", "rs", "-o", "name"]);
        (!n.trim().is_empty()).then(|| n.trim().to_string())
    });
    s.kube_ok(&[
        "-n",
        "demo",
        "delete",
        "deployment",
        "d3",
        "--cascade=orphan",
        "--timeout=30s",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let owners = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        &rs,
        "-o",
        "jsonpath={.metadata.ownerReferences}",
    ]);
    assert!(owners.is_empty(), "{owners}");
    // Deleting the namespace empties it, then it goes.
    s.kube_ok(&["delete", "namespace", "demo", "--timeout=60s"]);
    assert!(s
        .kube_err(&["get", "namespace", "demo"])
        .contains("not found"));
}

#[test]
fn services_get_endpoints_and_slices_from_the_pods_they_select() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-scheduler"]);
    let manifest = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec:
  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec:
  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
";
    let f = write(dir.path(), "svc.yaml", manifest);
    s.kube_ok(&["apply", "-f", &f]);
    for (pod, ip, ready) in [("a", "10.42.0.10", "True"), ("b", "10.42.0.11", "False")] {
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
        );
        s.kube_ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
    let eps = wait_for("endpoints for a", Duration::from_secs(30), || {
        let e = s.kube_ok(&["get", "endpoints", "web", "--ignore-not-found", "-o", "jsonpath={.subsets[0].addresses[*].ip}:{.subsets[0].ports[0].port}/{.subsets[0].notReadyAddresses[*].ip}"]);
        (e == "10.42.0.10:8080/10.42.0.11").then_some(e)
    });
    assert_eq!(eps, "10.42.0.10:8080/10.42.0.11");
    let table = s.kube_ok(&["get", "endpoints", "web"]);
    assert!(table.contains("10.42.0.10:8080"), "{table}");
    let slice = s.kube_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&slice).unwrap();
    let item = &v["items"][0];
    assert_eq!(item["addressType"], "IPv4");
    assert_eq!(item["ports"][0]["port"], 8080);
    assert_eq!(item["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(item["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(item["endpoints"][1]["conditions"]["ready"], false);
    assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "Service");
    // b becomes ready: both addresses are ready.
    s.kube_ok(&[
        "patch",
        "pod",
        "b",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    wait_for("both ready", Duration::from_secs(30), || {
        let e = s.kube_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].addresses[*].ip}",
        ]);
        (e == "10.42.0.10 10.42.0.11").then_some(())
    });
}

#[test]
fn pods_of_a_node_that_is_gone_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-scheduler"]);
    register_node(&s, dir.path());
    s.kube_ok(&["run", "orphan", "--image=busybox"]);
    let binding = write(
        dir.path(),
        "b.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"orphan"},"target":{"kind":"Node","name":"n1"}}"#,
    );
    s.kube_ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/orphan/binding",
        "-f",
        &binding,
    ]);
    s.kube_ok(&["delete", "node", "n1"]);
    wait_for("the orphaned pod gone", Duration::from_secs(60), || {
        let left = s.kube_ok(&["get", "pod", "orphan", "--ignore-not-found", "-o", "name"]);
        left.trim().is_empty().then_some(())
    });
}

#[test]
fn foreground_deletion_spares_dependents_with_another_owner_and_breaks_ownership_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let uid = |name: &str| s.kube_ok(&["get", "cm", name, "-o", "jsonpath={.metadata.uid}"]);
    let owned_by = |name: &str, owners: &[&str]| {
        let refs: Vec<serde_json::Value> = owners
            .iter()
            .map(|o| {
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o,
                                   "uid": uid(o), "blockOwnerDeletion": true})
            })
            .collect();
        let patch = serde_json::json!({"metadata": {"ownerReferences": refs}}).to_string();
        s.kube_ok(&["patch", "cm", name, "--type=merge", "-p", &patch]);
    };
    for name in ["owner1", "owner2", "shared", "only1", "c1", "c2", "c3"] {
        s.kube_ok(&["create", "cm", name]);
    }
    owned_by("shared", &["owner1", "owner2"]);
    owned_by("only1", &["owner1"]);
    s.kube_ok(&[
        "delete",
        "cm",
        "owner1",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    let left = s.kube_ok(&["get", "cm", "-o", "name"]);
    assert!(
        !left.contains("configmap/owner1") && !left.contains("configmap/only1"),
        "{left}"
    );
    // The dependent with a standing owner stays, its reference to the deleted one gone.
    assert_eq!(
        s.kube_ok(&[
            "get",
            "cm",
            "shared",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}"
        ]),
        "owner2"
    );
    // A cycle of blocking references (c1 <- c3 <- c2 <- c1) does not hold a foreground
    // deletion forever.
    owned_by("c1", &["c3"]);
    owned_by("c2", &["c1"]);
    owned_by("c3", &["c2"]);
    s.kube_ok(&["delete", "cm", "c1", "--cascade=foreground", "--wait=false"]);
    wait_for("the whole cycle deleted", Duration::from_secs(60), || {
        let left = s.kube_ok(&["get", "cm", "-o", "name"]);
        left.lines()
            .all(|l| !matches!(l, "configmap/c1" | "configmap/c2" | "configmap/c3"))
            .then_some(())
    });
}

#[test]
fn a_replica_set_adopts_the_matching_pods_no_controller_owns() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  labels: {app: adopt}\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
    s.kube_ok(&["create", "-f", &write(dir.path(), "pod.yaml", pod)]);
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: adopter\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: adopt}\n  template:\n    metadata:\n      labels: {app: adopt}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n";
    s.kube_ok(&["create", "-f", &write(dir.path(), "rs.yaml", rs)]);
    wait_for("the stray pod adopted", Duration::from_secs(30), || {
        let owner = s.kube_ok(&[
            "get",
            "pod",
            "stray",
            "-o",
            "jsonpath={.metadata.ownerReferences[?(@.controller==true)].name}",
        ]);
        (owner == "adopter").then_some(())
    });
    // It counts as the one replica: no other pod was made.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.kube_ok(&["get", "pods", "-l", "app=adopt", "-o", "name"])
            .trim(),
        "pod/stray"
    );
}
