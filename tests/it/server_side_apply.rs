//! Server-side apply with kubectl v1.32 (`kubectl apply --server-side`): managedFields on
//! every write, the applier's fields merged in and no-ops when nothing changes, conflicts
//! with another manager's fields (and `--force-conflicts`), fields dropped from a manifest
//! removed, shared ownership of equal values, and keyed lists of a custom resource merged
//! item by item between managers.
use serde_json::Value;

use crate::support::{write, Server};

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, tier: front}
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
        command: [sleep, \"3600\"]
";

fn json(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.kube_ok(args)).unwrap()
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts_like_kube() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-controller-manager"]);
    let f = write(dir.path(), "d.yaml", DEPLOY);
    assert!(s
        .kube_ok(&["apply", "--server-side", "-f", &f])
        .contains("deployment.apps/web serverside-applied"));
    let first = json(
        &s,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    assert_eq!(
        managers(&first),
        [("kubectl".to_string(), "Apply".to_string())]
    );
    let fields = &first["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"]
            .is_object(),
        "{fields}"
    );
    assert!(
        fields["f:spec"].get("f:strategy").is_none(),
        "defaults are nobody's: {fields}"
    );
    // Applying the same manifest again changes nothing, not even the resourceVersion.
    s.kube_ok(&["apply", "--server-side", "-f", &f]);
    let again = json(&s, &["get", "deploy", "web", "-o", "json"]);
    assert_eq!(
        again["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );

    // Another writer takes replicas; applying a different count then conflicts.
    s.kube_ok(&["scale", "deploy", "web", "--replicas=5"]);
    let changed = write(
        dir.path(),
        "d3.yaml",
        &DEPLOY.replace("replicas: 2", "replicas: 3"),
    );
    let err = s.kube_err(&["apply", "--server-side", "-f", &changed]);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\""),
        "{err}"
    );
    assert!(err.contains(": .spec.replicas"), "{err}");
    assert_eq!(
        json(&s, &["get", "deploy", "web", "-o", "json"])["spec"]["replicas"],
        5
    );
    s.kube_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &changed,
    ]);
    assert_eq!(
        json(&s, &["get", "deploy", "web", "-o", "json"])["spec"]["replicas"],
        3
    );

    // A label dropped from the manifest is removed; one another manager also applied stays.
    let shared = write(
        dir.path(),
        "shared.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {tier: front}\n",
    );
    s.kube_ok(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "-f",
        &shared,
    ]);
    let without = write(
        dir.path(),
        "d4.yaml",
        &DEPLOY
            .replace("replicas: 2", "replicas: 3")
            .replace("labels: {app: web, tier: front}", "labels: {app: web}"),
    );
    s.kube_ok(&["apply", "--server-side", "-f", &without]);
    let d = json(
        &s,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    assert_eq!(
        d["metadata"]["labels"]["tier"], "front",
        "ops still applies it"
    );
    let only_app = write(
        dir.path(),
        "d5.yaml",
        &DEPLOY.replace("replicas: 2", "replicas: 3").replace(
            "labels: {app: web, tier: front}",
            "labels: {app: web, team: a}",
        ),
    );
    s.kube_ok(&["apply", "--server-side", "-f", &only_app]);
    s.kube_ok(&["apply", "--server-side", "-f", &without]);
    let d = json(
        &s,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    assert!(d["metadata"]["labels"].get("team").is_none(), "{d}");
    let ms = managers(&d);
    assert!(ms.contains(&("ops".into(), "Apply".into())), "{ms:?}");
    assert!(ms.contains(&("kubectl".into(), "Apply".into())), "{ms:?}");

    // Plain writes are recorded too, by the manager kubectl names.
    s.kube_ok(&["create", "configmap", "c", "--from-literal=a=1"]);
    let cm = json(
        &s,
        &["get", "cm", "c", "-o", "json", "--show-managed-fields"],
    );
    assert_eq!(
        managers(&cm),
        [("kubectl-create".to_string(), "Update".to_string())]
    );
}

#[test]
fn keyed_lists_of_custom_resources_merge_item_by_item_between_managers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-controller-manager"]);
    let crd = write(
        dir.path(),
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: routes.net.example.com}
spec:
  group: net.example.com
  scope: Namespaced
  names: {plural: routes, kind: Route}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              rules:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [host]
                items:
                  type: object
                  required: [host]
                  properties:
                    host: {type: string}
                    backend: {type: string}
",
    );
    s.kube_ok(&["apply", "--server-side", "-f", &crd]);
    s.kube_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=20s",
        "crd/routes.net.example.com",
    ]);
    let route = |host: &str, backend: &str| {
        format!(
            "apiVersion: net.example.com/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  rules:\n  - {{host: {host}, backend: {backend}}}\n"
        )
    };
    let a = write(dir.path(), "a.yaml", &route("a.example", "svc-a"));
    let b = write(dir.path(), "b.yaml", &route("b.example", "svc-b"));
    s.kube_ok(&["apply", "--server-side", "--field-manager=team-a", "-f", &a]);
    s.kube_ok(&["apply", "--server-side", "--field-manager=team-b", "-f", &b]);
    let r = json(&s, &["get", "routes", "r", "-o", "json"]);
    let hosts: Vec<&str> = r["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a.example", "b.example"]);
    // team-b may not repoint team-a's rule, and its own rule goes when it stops applying it.
    let steal = write(dir.path(), "steal.yaml", &route("a.example", "svc-b"));
    let err = s.kube_err(&[
        "apply",
        "--server-side",
        "--field-manager=team-b",
        "-f",
        &steal,
    ]);
    assert!(
        err.contains("conflict with \"team-a\": .spec.rules[host=\"a.example\"].backend"),
        "{err}"
    );
    let same = write(dir.path(), "same.yaml", &route("a.example", "svc-a"));
    s.kube_ok(&[
        "apply",
        "--server-side",
        "--field-manager=team-b",
        "-f",
        &same,
    ]);
    let r = json(&s, &["get", "routes", "r", "-o", "json"]);
    assert_eq!(
        r["spec"]["rules"],
        serde_json::json!([{"host": "a.example", "backend": "svc-a"}]),
        "b.example went with team-b's manifest; a.example is shared"
    );
}

/// A create's manager owns what it sent and the kind's defaults, as in kube; what admission
/// added (the token volume, default tolerations, priority) and the status are not its.
#[test]
fn a_create_owns_what_it_sent_and_its_defaults_not_what_admission_added() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["run", "p", "--image=busybox:1.36", "--", "sleep", "1"]);
    let pod = json(
        &s,
        &["get", "pod", "p", "-o", "json", "--show-managed-fields"],
    );
    let entries = pod["metadata"]["managedFields"].as_array().unwrap();
    let run = entries
        .iter()
        .find(|e| e["manager"] == "kubectl-run")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(run["operation"], "Update");
    let f = &run["fieldsV1"];
    let mut spec: Vec<&String> = f["f:spec"].as_object().unwrap().keys().collect();
    spec.sort();
    assert_eq!(
        spec,
        [
            "f:containers",
            "f:dnsPolicy",
            "f:enableServiceLinks",
            "f:restartPolicy",
            "f:schedulerName",
            "f:securityContext",
            "f:terminationGracePeriodSeconds"
        ]
    );
    let container = &f["f:spec"]["f:containers"]["k:{\"name\":\"p\"}"];
    assert!(container.get("f:args").is_some() && container.get("f:imagePullPolicy").is_some());
    assert!(container.get("f:volumeMounts").is_none(), "{container}");
    assert!(f.get("f:status").is_none(), "{f}");
    // The pod does have what admission added.
    assert!(pod["spec"]["volumes"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("kube-api-access-"));
    assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
}
