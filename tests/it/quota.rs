//! Namespace budgets as kube enforces them: LimitRange defaults and bounds on pods, a
//! ResourceQuota counted by its controller and charged by admission (kube's refusals word
//! for word, usage given back when pods go), a ReplicaSet held at the quota; and the
//! HorizontalPodAutoscaler bringing a Deployment into its bounds and saying, with no
//! kubelets to report usage, why it cannot do more (`metrics` has it scaling on real use).
use std::time::Duration;

use crate::support::{wait_for, write, Server};

const BUDGET: &str = "apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 300m, memory: 100Mi}
    max: {cpu: '1'}
    min: {cpu: 50m}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: '3', requests.cpu: '1', limits.memory: 1Gi, count/deployments.apps: '1', services.nodeports: '0'}
";

fn used(s: &Server) -> serde_json::Value {
    let out = s.kube_ok(&["get", "quota", "compute", "-n", "team", "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"]["used"].clone()
}

fn run_pod(s: &Server, name: &str, resources: &str) -> std::process::Output {
    let overrides = format!(
        r#"{{"spec":{{"containers":[{{"name":"{name}","image":"busybox","resources":{resources}}}]}}}}"#
    );
    s.kubectl(&[
        "run",
        name,
        "-n",
        "team",
        "--image=busybox",
        &format!("--overrides={overrides}"),
    ])
}

#[test]
fn limit_ranges_default_and_bound_pods_and_quotas_hold_a_namespace_to_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["create", "namespace", "team"]);
    s.kube_ok(&["apply", "-f", &write(dir.path(), "budget.yaml", BUDGET)]);
    // The LimitRange is stored with kube's defaults: a default request from the default limit.
    let lr = s.kube_ok(&[
        "get",
        "limitrange",
        "defaults",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.limits[0].defaultRequest}",
    ]);
    assert_eq!(lr, r#"{"cpu":"300m","memory":"100Mi"}"#);
    // Until the controller has counted it, the quota refuses what it limits.
    wait_for("the quota counted", Duration::from_secs(15), || {
        (used(&s)["pods"] == "0").then_some(())
    });
    assert_eq!(used(&s)["count/deployments.apps"], "0");

    // A pod naming nothing gets the defaults, and says so.
    let out = run_pod(&s, "a", "{}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let annotation = s.kube_ok(&[
        "get",
        "pod",
        "a",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}",
    ]);
    assert_eq!(
        annotation,
        "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a"
    );
    let u = used(&s);
    assert_eq!(
        (&u["pods"], &u["requests.cpu"], &u["limits.memory"]),
        (&"1".into(), &"300m".into(), &"100Mi".into())
    );

    // Above the LimitRange's max, and above the quota: kube's words.
    let err = String::from_utf8_lossy(&run_pod(&s, "big", r#"{"limits":{"cpu":"2"}}"#).stderr)
        .to_string();
    assert!(
        err.contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{err}"
    );
    let err =
        String::from_utf8_lossy(&run_pod(&s, "greedy", r#"{"requests":{"cpu":"800m"}}"#).stderr)
            .to_string();
    assert!(
        err.contains(r#"pods "greedy" is forbidden: exceeded quota: compute, requested: requests.cpu=800m, used: requests.cpu=300m, limited: requests.cpu=1"#),
        "{err}"
    );
    assert_eq!(used(&s)["pods"], "1", "a refused pod is not charged");

    // A Service of type NodePort is refused by services.nodeports=0; a ClusterIP one is not.
    let err = s.kube_err(&[
        "create",
        "service",
        "nodeport",
        "np",
        "-n",
        "team",
        "--tcp=80:80",
    ]);
    assert!(
        err.contains("exceeded quota: compute, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"),
        "{err}"
    );
    s.kube_ok(&[
        "create",
        "service",
        "clusterip",
        "cip",
        "-n",
        "team",
        "--tcp=80:80",
    ]);

    // A ReplicaSet asking for 4 gets as many pods as the quota leaves (2 more), and the
    // refusals surface as its events.
    s.kube_ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=busybox",
        "--replicas=4",
    ]);
    let err = s.kube_err(&[
        "create",
        "deployment",
        "web2",
        "-n",
        "team",
        "--image=busybox",
    ]);
    assert!(err.contains("exceeded quota: compute, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"), "{err}");
    wait_for("the quota full", Duration::from_secs(30), || {
        (used(&s)["pods"] == "3").then_some(())
    });
    wait_for("a FailedCreate event", Duration::from_secs(30), || {
        let events = s.kube_ok(&[
            "get",
            "events",
            "-n",
            "team",
            "--field-selector",
            "reason=FailedCreate",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        events.contains("is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=300m, used: pods=3,requests.cpu=900m, limited: pods=3,requests.cpu=1").then_some(())
    });
    let pods = s.kube_ok(&["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");

    // Deleting the lone pod gives its share back; the ReplicaSet takes it.
    s.kube_ok(&["delete", "pod", "a", "-n", "team", "--wait=false"]);
    wait_for("the ReplicaSet at 3 pods", Duration::from_secs(30), || {
        let n = s
            .kube_ok(&["get", "pods", "-n", "team", "-l", "app=web", "-o", "name"])
            .lines()
            .count();
        (n == 3).then_some(())
    });
    let u = used(&s);
    assert_eq!(
        (&u["pods"], &u["requests.cpu"]),
        (&"3".into(), &"900m".into()),
        "{u}"
    );

    // With a quota on cpu and no LimitRange, a container must name its cpu.
    s.kube_ok(&["create", "namespace", "strict"]);
    s.kube_ok(&[
        "create",
        "quota",
        "cpu",
        "-n",
        "strict",
        "--hard=limits.cpu=2",
    ]);
    wait_for("the strict quota counted", Duration::from_secs(15), || {
        let u = s.kube_ok(&[
            "get",
            "quota",
            "cpu",
            "-n",
            "strict",
            "-o",
            "jsonpath={.status.used.limits\\.cpu}",
        ]);
        (u == "0").then_some(())
    });
    let err = s.kube_err(&["run", "bare", "-n", "strict", "--image=busybox"]);
    assert!(
        err.contains(
            r#"pods "bare" is forbidden: failed quota: cpu: must specify limits.cpu for: bare"#
        ),
        "{err}"
    );
}

const SCALED: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m}}}]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: api}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: api}
  minReplicas: 2
  maxReplicas: 4
  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]
";

fn condition(s: &Server, type_: &str) -> String {
    s.kube_ok(&[
        "get",
        "hpa",
        "api",
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    ])
}

#[test]
fn an_autoscaler_keeps_its_target_within_bounds_and_says_why_it_cannot_read_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["apply", "-f", &write(dir.path(), "scaled.yaml", SCALED)]);
    // Below minReplicas: raised at once, through the scale subresource.
    wait_for(
        "the deployment raised to 2",
        Duration::from_secs(30),
        || {
            let r = s.kube_ok(&[
                "get",
                "deployment",
                "api",
                "-o",
                "jsonpath={.spec.replicas}",
            ]);
            (r == "2").then_some(())
        },
    );
    wait_for("an honest ScalingActive", Duration::from_secs(45), || {
        (condition(&s, "ScalingActive") == "False/FailedGetResourceMetric").then_some(())
    });
    assert_eq!(condition(&s, "AbleToScale"), "True/SucceededGetScale");
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(events.contains("SuccessfulRescale: New size: 2; reason: Current number of replicas below Spec.MinReplicas"), "{events}");
    assert!(
        events.contains(
            "unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        ),
        "{events}"
    );
    // Above maxReplicas: brought down.
    s.kube_ok(&["scale", "deployment", "api", "--replicas=7"]);
    wait_for(
        "the deployment lowered to 4",
        Duration::from_secs(45),
        || {
            let r = s.kube_ok(&[
                "get",
                "deployment",
                "api",
                "-o",
                "jsonpath={.spec.replicas}",
            ]);
            (r == "4").then_some(())
        },
    );
    // A target that does not exist: AbleToScale False.
    let ghost = SCALED
        .split("---\n")
        .nth(1)
        .unwrap_or_default()
        .replace("name: api", "name: ghost");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "ghost.yaml", &ghost)]);
    wait_for("FailedGetScale", Duration::from_secs(45), || {
        let c = s.kube_ok(&[
            "get",
            "hpa",
            "ghost",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].reason}",
        ]);
        (c == "FailedGetScale").then_some(())
    });
}

#[test]
fn workload_counts_come_back_down_when_the_objects_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&[
        "create",
        "quota",
        "workloads",
        "--hard=count/replicasets.apps=2,count/deployments.apps=2",
    ]);
    let used = || {
        s.kube_ok(&[
            "get",
            "quota",
            "workloads",
            "-o",
            "jsonpath={.status.used.count/replicasets\\.apps}",
        ])
    };
    wait_for("the quota counted", Duration::from_secs(20), || {
        (used() == "0").then_some(())
    });
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: rs\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {app: rs}\n  template:\n    metadata:\n      labels: {app: rs}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n";
    s.kube_ok(&["create", "-f", &write(dir.path(), "rs.yaml", rs)]);
    wait_for("the replica set counted", Duration::from_secs(20), || {
        (used() == "1").then_some(())
    });
    s.kube_ok(&["delete", "rs", "rs"]);
    // Released at once (not at the 5-minute resync).
    wait_for("the count released", Duration::from_secs(20), || {
        (used() == "0").then_some(())
    });
}
