//! PodDisruptionBudgets: the disruption controller's status from the pods a budget selects
//! (an integer minAvailable counts the pods; maxUnavailable and percentages count their
//! controller's replicas) and the eviction subresource honouring it — one eviction spends
//! the one allowed disruption, the next is refused with kube's 429.
use std::time::Duration;

use crate::support::{wait_for, write, Server};
use crate::workloads::{register_node, report_running};

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
";

fn status(s: &Server, pdb: &str) -> serde_json::Value {
    let (ns, name) = pdb.split_once('/').unwrap_or(("default", pdb));
    let out = s.kube_ok(&["get", "pdb", name, "-n", ns, "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
}

fn evict(s: &Server, dir: &std::path::Path, pod: &str) -> std::process::Output {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
    );
    let f = write(dir, &format!("evict-{pod}.json"), &body);
    s.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
        "-f",
        &f,
    ])
}

#[test]
fn budgets_count_healthy_pods_and_evictions_respect_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "web.yaml", WEB)]);
    let pods = wait_for("three bound pods", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName} {end}",
        ]);
        let bound: Vec<String> = out
            .split_whitespace()
            .filter(|p| p.ends_with("=n1"))
            .map(|p| p.trim_end_matches("=n1").to_string())
            .collect();
        (bound.len() == 3).then_some(bound)
    });
    for p in &pods {
        report_running(&s, p, true);
    }
    let budgets = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: min2}\nspec: {minAvailable: 2, selector: {matchLabels: {app: web}}}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: pct, namespace: other}\nspec: {maxUnavailable: 34%, selector: {matchLabels: {app: web}}}\n";
    s.kube_ok(&["create", "namespace", "other"]);
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pdb.yaml", budgets)]);
    let st = wait_for("min2's status", Duration::from_secs(30), || {
        let st = status(&s, "min2");
        (st["currentHealthy"] == 3).then_some(st)
    });
    assert_eq!(st["desiredHealthy"], 2);
    assert_eq!(st["expectedPods"], 3);
    assert_eq!(st["disruptionsAllowed"], 1);
    assert_eq!(st["conditions"][0]["reason"], "SufficientPods");

    // One eviction spends the allowed disruption; the next is refused until it returns.
    let out = evict(&s, dir.path(), &pods[0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleting = s.kube_ok(&[
        "get",
        "pod",
        &pods[0],
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!deleting.is_empty());
    let out = evict(&s, dir.path(), &pods[1]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    let st = wait_for(
        "min2 with no disruption left",
        Duration::from_secs(30),
        || {
            let st = status(&s, "min2");
            (st["disruptionsAllowed"] == 0 && st["currentHealthy"] == 2).then_some(st)
        },
    );
    assert_eq!(st["conditions"][0]["reason"], "InsufficientPods");

    // A percentage counts the Deployment's replicas: 3 − ⌈34% of 3⌉ = 1 must stay. Its
    // namespace has no pods of the Deployment, so nothing is healthy there.
    let st = wait_for("pct's status", Duration::from_secs(30), || {
        let st = status(&s, "other/pct");
        st["conditions"].is_array().then_some(st)
    });
    assert_eq!(st["expectedPods"], 0);
    assert_eq!(st["disruptionsAllowed"], 0);
    let pct = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: pct}\nspec: {maxUnavailable: 34%, selector: {matchLabels: {app: web}}}\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pct.yaml", pct)]);
    let st = wait_for("pct in default", Duration::from_secs(30), || {
        let st = status(&s, "pct");
        (st["expectedPods"] == 3).then_some(st)
    });
    assert_eq!(st["desiredHealthy"], 1);
}
