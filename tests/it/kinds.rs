//! kubectl v1.32 against the built-in kinds beyond the basics: apply without flags (served
//! OpenAPI, field validation, strategic merge patch by merge key), typed `kubectl create`
//! commands (protobuf bodies), Service address allocation, pods' binding and graceful
//! deletion, finalizers, scale, field selectors and kube-shaped validation errors.
use crate::support::Server;

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

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
        command: [sleep, \"3600\"]
      - name: side
        image: busybox:1.36
";

#[test]
fn apply_validates_against_served_openapi_and_patches_by_merge_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(dir.path(), "d.yaml", DEPLOY);
    assert!(s
        .kube_ok(&["apply", "-f", &f])
        .contains("deployment.apps/web created"));
    assert!(s.kube_ok(&["apply", "-f", &f]).contains("unchanged"));
    // A changed image is a strategic merge patch naming the container: the other fields of
    // that container and the other container stay.
    let f2 = write(
        dir.path(),
        "d2.yaml",
        &DEPLOY.replacen("busybox:1.36", "busybox:1.37", 1),
    );
    assert!(s.kube_ok(&["apply", "-f", &f2]).contains("configured"));
    let got = s.kube_ok(&["get", "deploy", "web", "-o", "json"]);
    let d: serde_json::Value = serde_json::from_str(&got).unwrap();
    let cs = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(cs[0]["image"], "busybox:1.37");
    assert_eq!(cs[0]["command"], serde_json::json!(["sleep", "3600"]));
    assert_eq!(cs[1]["name"], "side");
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(cs[0]["imagePullPolicy"], "IfNotPresent");
    // Wide output has kube's columns.
    let wide = s.kube_ok(&["get", "deploy", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(wide.contains("web,side"), "{wide}");
    // explain reads the served OpenAPI v3.
    let explain = s.kube_ok(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("DeploymentStrategy"), "{explain}");
    // Unknown fields: refused under kubectl's default Strict validation, dropped with a
    // warning when validation is off.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &DEPLOY
            .replace("  replicas: 2\n", "  replicas: 2\n  replicaz: 3\n")
            .replace("name: web\nspec", "name: web2\nspec"),
    );
    let err = s.kube_err(&["apply", "-f", &bad]);
    assert!(err.contains("unknown field \"spec.replicaz\""), "{err}");
    let out = s.kubectl(&["apply", "-f", &bad, "--validate=false"]);
    assert!(out.status.success());
    // (The last-applied annotation keeps the input as given, as in kube; the spec does not.)
    let got = s.kube_ok(&["get", "deploy", "web2", "-o", "jsonpath={.spec}"]);
    assert!(!got.contains("replicaz"), "{got}");
    // A value of the wrong type is a 400 naming the field.
    let typed = write(
        dir.path(),
        "t.yaml",
        &DEPLOY
            .replace("replicas: 2", "replicas: two")
            .replace("name: web\nspec", "name: web3\nspec"),
    );
    let err = s.kube_err(&["apply", "-f", &typed, "--validate=false"]);
    assert!(err.contains("spec.replicas"), "{err}");
}

#[test]
fn typed_create_commands_send_protobuf_and_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["create", "namespace", "demo"]);
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "c1",
        "--from-literal=a=b",
    ]);
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=p=q",
    ]);
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "job",
        "j1",
        "--image=busybox",
        "--",
        "true",
    ]);
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "d1",
        "--image=busybox:1.36",
        "--replicas=3",
    ]);
    s.kube_ok(&[
        "-n",
        "demo",
        "create",
        "role",
        "r1",
        "--verb=get",
        "--resource=pods",
    ]);
    let cm = s.kube_ok(&["-n", "demo", "get", "cm", "c1", "-o", "jsonpath={.data.a}"]);
    assert_eq!(cm, "b");
    let secret = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        "secret",
        "s1",
        "-o",
        "jsonpath={.data.p}",
    ]);
    assert_eq!(secret, "cQ==");
    let replicas = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "d1",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "3");
    let selector = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        "job",
        "j1",
        "-o",
        "jsonpath={.spec.selector.matchLabels}",
    ]);
    assert!(
        selector.contains("batch.kubernetes.io/controller-uid"),
        "{selector}"
    );
    // Scale through the scale subresource (a protobuf-free path kubectl also takes).
    s.kube_ok(&["-n", "demo", "scale", "deploy", "d1", "--replicas=5"]);
    let scale = s.kube_ok(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "d1",
        "--subresource=scale",
        "-o",
        "jsonpath={.spec.replicas} {.status.selector}",
    ]);
    assert_eq!(scale, "5 app=d1");
    // Deletion with protobuf DeleteOptions.
    s.kube_ok(&["-n", "demo", "delete", "configmap", "c1"]);
    assert!(s
        .kube_err(&["-n", "demo", "get", "cm", "c1"])
        .contains("not found"));
}

#[test]
fn services_get_addresses_and_ports_that_are_theirs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("d"),
        &["--service-node-port-range", "30100-30102"],
    );
    let kubernetes = s.kube_ok(&[
        "get",
        "svc",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(kubernetes, "10.43.0.1");
    s.kube_ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let port = s.kube_ok(&[
        "get",
        "svc",
        "np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let port: u16 = port.parse().unwrap();
    assert!((30100..=30102).contains(&port));
    let ip = s.kube_ok(&["get", "svc", "np", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.43."), "{ip}");
    // An address someone has is refused, and freed when its Service goes.
    let mine = write(dir.path(), "dns.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  clusterIP: 10.43.0.10\n  ports: [{port: 53, protocol: UDP}]\n");
    s.kube_ok(&["create", "-f", &mine]);
    let again = write(dir.path(), "dns2.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: dns2}\nspec:\n  clusterIP: 10.43.0.10\n  ports: [{port: 53, protocol: UDP}]\n");
    let err = s.kube_err(&["create", "-f", &again]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let outside = write(dir.path(), "out.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: out}\nspec:\n  clusterIP: 192.168.0.10\n  ports: [{port: 53}]\n");
    let err = s.kube_err(&["create", "-f", &outside]);
    assert!(err.contains("not in the valid range"), "{err}");
    s.kube_ok(&["delete", "svc", "dns"]);
    s.kube_ok(&["create", "-f", &again]);
    // The node port range has three ports: the fourth NodePort Service cannot have one.
    s.kube_ok(&["create", "service", "nodeport", "np2", "--tcp=81:8080"]);
    s.kube_ok(&["create", "service", "nodeport", "np3", "--tcp=82:8080"]);
    let err = s.kube_err(&["create", "service", "nodeport", "np4", "--tcp=83:8080"]);
    assert!(err.contains("range is full"), "{err}");
    let table = s.kube_ok(&["get", "svc", "np"]);
    assert!(table.contains(&format!("80:{port}/TCP")), "{table}");
}

#[test]
fn pods_bind_once_delete_gracefully_and_finalizers_hold_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["run", "p1", "--image=busybox:1.36", "--", "sleep", "100"]);
    let pod = s.kube_ok(&["get", "pod", "p1", "-o", "json"]);
    let p: serde_json::Value = serde_json::from_str(&pod).unwrap();
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    let binding = write(
        dir.path(),
        "b.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p1"},"target":{"kind":"Node","name":"n1"}}"#,
    );
    s.kube_ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p1/binding",
        "-f",
        &binding,
    ]);
    let err = s.kube_err(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p1/binding",
        "-f",
        &binding,
    ]);
    assert!(err.contains("already assigned to node"), "{err}");
    let on_n1 = s.kube_ok(&[
        "get",
        "pods",
        "--field-selector",
        "spec.nodeName=n1",
        "-o",
        "name",
    ]);
    assert_eq!(on_n1.trim(), "pod/p1");
    assert!(s
        .kube_ok(&[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName=n2",
            "-o",
            "name"
        ])
        .trim()
        .is_empty());
    let err = s.kube_err(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(
        err.contains("field label not supported: spec.bogus"),
        "{err}"
    );
    // A bound pod is deleted gracefully: it stays, Terminating, for its kubelet to finish.
    s.kube_ok(&["delete", "pod", "p1", "--wait=false"]);
    let table = s.kube_ok(&["get", "pod", "p1"]);
    assert!(table.contains("Terminating"), "{table}");
    let grace = s.kube_ok(&[
        "get",
        "pod",
        "p1",
        "-o",
        "jsonpath={.metadata.deletionGracePeriodSeconds}",
    ]);
    assert_eq!(grace, "30");
    s.kube_ok(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    assert!(s.kube_err(&["get", "pod", "p1"]).contains("not found"));
    // Finalizers hold an object until they are removed.
    let cm = write(dir.path(), "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n");
    s.kube_ok(&["create", "-f", &cm]);
    s.kube_ok(&["delete", "cm", "held", "--wait=false"]);
    let ts = s.kube_ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty());
    s.kube_ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(s.kube_err(&["get", "cm", "held"]).contains("not found"));
}

#[test]
fn invalid_objects_get_kube_shaped_field_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(
        dir.path(),
        "bad.yaml",
        &DEPLOY.replace(
            "labels: {app: web}\n    spec",
            "labels: {app: other}\n    spec",
        ),
    );
    let err = s.kube_err(&["create", "-f", &f]);
    assert!(
        err.contains(
            "The Deployment \"web\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}"
        ) && err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let pod = write(dir.path(), "pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c}]\n  restartPolicy: Sometimes\n");
    let err = s.kube_err(&["create", "-f", &pod]);
    assert!(
        err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    assert!(
        err.contains("spec.restartPolicy: Unsupported value: \"Sometimes\""),
        "{err}"
    );
    let labels = write(
        dir.path(),
        "l.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: l\n  labels: {app: \"has space\"}\n",
    );
    let err = s.kube_err(&["create", "-f", &labels]);
    assert!(
        err.contains("metadata.labels: Invalid value: \"has space\""),
        "{err}"
    );
}
