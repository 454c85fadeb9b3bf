//! kubectl v1.32 against the built-in kinds beyond the basics: apply without flags (served
//! OpenAPI, field validation, strategic merge patch by merge key), typed `kubectl create`
//! commands (protobuf bodies), Service address allocation, pods' binding and graceful
//! deletion, finalizers, scale, field selectors and kube-shaped validation errors.
use std::time::Duration;

use crate::support::{wait_for, write, Server};

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
    // kube-apiserver labels every namespace with its name, and keeps the label so.
    let label = "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}";
    assert_eq!(s.kube_ok(&["get", "ns", "demo", "-o", label]), "demo");
    s.kube_ok(&[
        "label",
        "ns",
        "demo",
        "kubernetes.io/metadata.name=other",
        "--overwrite",
    ]);
    assert_eq!(s.kube_ok(&["get", "ns", "demo", "-o", label]), "demo");
    assert_eq!(
        s.kube_ok(&["get", "ns", "kube-system", "-o", label]),
        "kube-system"
    );
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
    let mine = write(dir.path(), "dns.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  clusterIP: 10.43.0.11\n  ports: [{port: 53, protocol: UDP}]\n");
    s.kube_ok(&["create", "-f", &mine]);
    let again = write(dir.path(), "dns2.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: dns2}\nspec:\n  clusterIP: 10.43.0.11\n  ports: [{port: 53, protocol: UDP}]\n");
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
    // This cluster has one family: dual-stack can be preferred, not required.
    let prefer = write(dir.path(), "prefer.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: prefer}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  ports: [{port: 80}]\n");
    s.kube_ok(&["create", "-f", &prefer]);
    let fams = s.kube_ok(&["get", "svc", "prefer", "-o", "jsonpath={.spec.ipFamilies}"]);
    assert_eq!(fams, r#"["IPv4"]"#);
    let require = write(dir.path(), "require.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: require}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ports: [{port: 80}]\n");
    let err = s.kube_err(&["create", "-f", &require]);
    assert!(
        err.contains("this cluster is not configured for dual-stack services"),
        "{err}"
    );
}

#[test]
fn dual_stack_services_and_nodes_get_an_address_range_per_family() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("d"),
        &[
            "--service-cidr",
            "10.43.0.0/16,fd00:43::/112",
            "--cluster-cidr",
            "10.42.0.0/16,fd00:42::/56",
        ],
    );
    let ips = |name: &str| s.kube_ok(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIPs}"]);
    let both = write(dir.path(), "both.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: both}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  selector: {app: x}\n  ports: [{port: 80}]\n");
    s.kube_ok(&["create", "-f", &both]);
    let got: Vec<String> = serde_json::from_str(&ips("both")).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("10.43.") && got[1].starts_with("fd00:43::"),
        "{got:?}"
    );
    let fams = s.kube_ok(&["get", "svc", "both", "-o", "jsonpath={.spec.ipFamilies}"]);
    assert_eq!(fams, r#"["IPv4","IPv6"]"#);
    // IPv6 first when asked.
    let six = write(dir.path(), "six.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: six}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6]\n  ports: [{port: 80}]\n");
    s.kube_ok(&["create", "-f", &six]);
    let got6: Vec<String> = serde_json::from_str(&ips("six")).unwrap();
    assert!(
        got6[0].starts_with("fd00:43::") && got6[1].starts_with("10.43."),
        "{got6:?}"
    );
    // Going single-stack releases the secondary address: someone else may take it.
    s.kube_ok(&[
        "patch",
        "svc",
        "both",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#,
    ]);
    assert_eq!(ips("both"), format!(r#"["{}"]"#, got[0]));
    let taker = write(dir.path(), "taker.yaml", &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: taker}}\nspec:\n  clusterIP: {}\n  ports: [{{port: 80}}]\n", got[1]));
    s.kube_ok(&["create", "-f", &taker]);
    let fams = s.kube_ok(&["get", "svc", "taker", "-o", "jsonpath={.spec.ipFamilies}"]);
    assert_eq!(fams, r#"["IPv6"]"#);
    // A node gets a pod range of each family.
    let node = write(
        dir.path(),
        "n1.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    );
    s.kube_ok(&["create", "-f", &node]);
    let cidrs = wait_for("pod CIDRs", Duration::from_secs(30), || {
        let out = s.kube_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs}"]);
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(cidrs, r#"["10.42.0.0/24","fd00:42::/64"]"#);
}

#[test]
fn pods_bind_once_delete_gracefully_and_finalizers_hold_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    // The node the pod is bound to exists (pod GC removes pods of nodes that do not).
    let node = write(
        dir.path(),
        "n1.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    );
    s.kube_ok(&["create", "-f", &node]);
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

/// curl as the admin, with an Accept header kubectl cannot set; returns (body, status).
fn admin_curl(s: &Server, path: &str, accept: &str) -> (String, String) {
    admin_curl_post(s, path, accept, None)
}

/// `admin_curl`, POSTing `body` (JSON) when given.
fn admin_curl_post(s: &Server, path: &str, accept: &str, body: Option<&str>) -> (String, String) {
    let tls = s.data_dir.join("server/tls");
    let mut cmd = std::process::Command::new("curl");
    if let Some(b) = body {
        cmd.args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-raw",
            b,
        ]);
    }
    cmd.args(["-s", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg("--cacert")
        .arg(tls.join("server-ca.crt"))
        .arg("--cert")
        .arg(tls.join("client-admin.crt"))
        .arg("--key")
        .arg(tls.join("client-admin.key"))
        .arg(format!("https://127.0.0.1:{}{path}", s.api_port));
    let out = crate::support::run_bounded(cmd, std::time::Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

#[test]
fn metadata_only_answers_bookmarks_and_resource_version_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), crate::support::QUIET);
    s.kube_ok(&["create", "configmap", "a", "--from-literal=k=v"]);
    s.kube_ok(&["create", "configmap", "b", "--from-literal=k=v"]);
    let meta = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (body, code) = admin_curl(&s, "/api/v1/namespaces/default/configmaps", meta);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadataList");
    assert_eq!(v["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(v["items"][0]["metadata"]["name"], "a");
    assert!(v["items"][0].get("data").is_none());
    let one = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let (body, _) = admin_curl(&s, "/api/v1/namespaces/default/configmaps/b", one);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadata");
    // sendInitialEvents: the current objects, then the bookmark that marks their end.
    let watch = s.kube_ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"]);
    let events: Vec<serde_json::Value> = watch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "ADDED", "BOOKMARK"], "{watch}");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let err = s.kube_err(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true",
    ]);
    assert!(err.contains("sendInitialEvents is forbidden"), "{err}");
    // A LIST for a revision the store has not reached is 504; Exact reads that revision.
    let (body, code) = admin_curl(
        &s,
        "/api/v1/namespaces/default/configmaps?resourceVersion=99999999",
        "application/json",
    );
    assert_eq!(code, "504", "{body}");
    assert!(body.contains("Too large resource version"), "{body}");
    let rv = s.kube_ok(&[
        "get",
        "cm",
        "a",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    s.kube_ok(&["delete", "cm", "a"]);
    let (body, code) = admin_curl(
        &s,
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
        "application/json",
    );
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"name\":\"a\""), "{body}");
    let (body, _) = admin_curl(
        &s,
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}"),
        "application/json",
    );
    assert!(!body.contains("\"name\":\"a\""), "{body}");
}

#[test]
fn events_expire_after_an_hour_like_kube_apiservers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), crate::support::QUIET);
    let ev = write(dir.path(), "ev.yaml", "apiVersion: v1\nkind: Event\nmetadata: {name: e1}\ninvolvedObject: {kind: Pod, name: p, namespace: default}\nreason: Testing\nmessage: hello\ntype: Normal\ncount: 1\n");
    s.kube_ok(&["create", "-f", &ev]);
    let table = s.kube_ok(&["get", "events"]);
    assert!(
        table.contains("Testing") && table.contains("pod/p") && table.contains("hello"),
        "{table}"
    );
    let out = s.ok(&["get", "/registry/events/default/e1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lease = v["kvs"][0]["lease"].as_i64().unwrap_or(0);
    assert_ne!(lease, 0, "{out}");
    let ttl = s.ok(&["lease", "timetolive", &format!("{lease:x}")]);
    let granted: i64 = ttl
        .split("granted with TTL(")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert_eq!(granted, 3660, "{ttl}");
    // A second event within the minute shares the lease.
    let ev2 = write(
        dir.path(),
        "ev2.yaml",
        &std::fs::read_to_string(&ev)
            .unwrap()
            .replace("name: e1", "name: e2"),
    );
    s.kube_ok(&["create", "-f", &ev2]);
    let out = s.ok(&["get", "/registry/events/default/e2", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kvs"][0]["lease"].as_i64(), Some(lease));
}

#[test]
fn events_k8s_io_events_are_core_events_under_their_newer_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), crate::support::QUIET);
    let ev = write(
        dir.path(),
        "ev.yaml",
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: synced}\neventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: example.com/ctl\nreportingInstance: ctl-1\naction: Sync\nreason: Synced\nnote: all good\ntype: Normal\nregarding: {apiVersion: v1, kind: ConfigMap, name: c1, namespace: default}\n",
    );
    assert!(s
        .kube_ok(&["apply", "-f", &ev])
        .contains("event.events.k8s.io/synced created"));
    // The same object through core/v1, kept once in core/v1's form with the events' lease.
    let core: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "events.v1.", "synced", "-o", "json"])).unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "all good");
    assert_eq!(core["involvedObject"]["name"], "c1");
    assert_eq!(core["reportingComponent"], "example.com/ctl");
    let stored = s.ok(&[
        "get",
        "/registry/events/default/synced",
        "--print-value-only",
    ]);
    assert!(stored.contains("\"involvedObject\""), "{stored}");
    let new: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "events.events.k8s.io", "synced", "-o", "json"]))
            .unwrap();
    assert_eq!(new["note"], "all good");
    assert_eq!(new["regarding"]["kind"], "ConfigMap");
    // Core events read through events.k8s.io; field selectors by each API's names.
    let old = write(dir.path(), "old.yaml", "apiVersion: v1\nkind: Event\nmetadata: {name: old}\ninvolvedObject: {kind: Pod, name: p, namespace: default}\nreason: Testing\nmessage: hello\ntype: Warning\n");
    s.kube_ok(&["create", "-f", &old]);
    let listed = s.kube_ok(&[
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "regarding.kind=Pod",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert_eq!(listed, "hello");
    let listed = s.kube_ok(&[
        "get",
        "events.v1.",
        "--field-selector",
        "reason=Synced",
        "-o",
        "name",
    ]);
    assert_eq!(listed.trim(), "event/synced");
    // events.k8s.io's own rules for new events.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: bad}\nreason: R\ntype: Sometimes\nregarding: {kind: Pod, name: p}\n",
    );
    let err = s.kube_err(&["apply", "-f", &bad]);
    for expected in [
        "eventTime: Required value",
        "type: Unsupported value: \"Sometimes\"",
        "reportingController: Required value",
        "action: Required value",
    ] {
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
}

#[test]
fn priority_classes_set_pod_priority_and_the_kubernetes_service_has_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let pcs = s.kube_ok(&["get", "priorityclass", "-o", "name"]);
    assert!(
        pcs.contains("system-node-critical") && pcs.contains("system-cluster-critical"),
        "{pcs}"
    );
    s.kube_ok(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--preemption-policy=Never",
    ]);
    s.kube_ok(&[
        "run",
        "p",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"priorityClassName":"high"}}"#,
    ]);
    let got = s.kube_ok(&[
        "get",
        "pod",
        "p",
        "-o",
        "jsonpath={.spec.priority} {.spec.preemptionPolicy}",
    ]);
    assert_eq!(got, "1000 Never");
    let err = s.kube_err(&[
        "run",
        "q",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"priorityClassName":"nope"}}"#,
    ]);
    assert!(
        err.contains("no PriorityClass with name nope was found"),
        "{err}"
    );
    let ep = s.kube_ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(ep, format!("127.0.0.1:{}", s.api_port));
    let slice = s.kube_ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[0].addresses[0]}",
    ]);
    assert_eq!(slice, "127.0.0.1");
}

#[test]
fn api_priority_and_fairness_objects_are_served_with_kubes_defaults_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let objects = crate::support::write(
        dir.path(),
        "apf.yaml",
        "apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: PriorityLevelConfiguration\nmetadata:\n  name: queued\nspec:\n  type: Limited\n  limited:\n    limitResponse:\n      type: Queue\n      queuing:\n        queues: 16\n---\napiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata:\n  name: mine\nspec:\n  priorityLevelConfiguration:\n    name: queued\n  distinguisherMethod:\n    type: ByUser\n  rules:\n  - subjects:\n    - kind: Group\n      group:\n        name: system:authenticated\n    nonResourceRules:\n    - verbs: [\"*\"]\n      nonResourceURLs: [\"*\"]\n",
    );
    s.kube_ok(&["apply", "-f", &objects]);
    let levels = s.kube_ok(&["get", "prioritylevelconfigurations", "queued"]);
    let mut lines = levels.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "TYPE",
            "NOMINALCONCURRENCYSHARES",
            "QUEUES",
            "HANDSIZE",
            "QUEUELENGTHLIMIT",
            "AGE"
        ]
    );
    assert_eq!(
        lines
            .next()
            .unwrap()
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>(),
        ["queued", "Limited", "30", "16", "8", "50"]
    );
    let schemas = s.kube_ok(&["get", "flowschemas", "mine", "--no-headers"]);
    assert_eq!(
        schemas.split_whitespace().take(4).collect::<Vec<_>>(),
        ["mine", "queued", "1000", "ByUser"]
    );
    assert!(s
        .kube_ok(&["explain", "flowschema.spec.matchingPrecedence"])
        .contains("matchingPrecedence"));
}

#[test]
fn each_group_has_its_discovery_document_and_a_local_api_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let group: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "--raw", "/apis/admissionregistration.k8s.io"]))
            .unwrap();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "admissionregistration.k8s.io/v1"
    );
    assert!(s
        .kube_err(&["get", "--raw", "/apis/nothing.example.com"])
        .contains("NotFound"));
    let services =
        crate::support::wait_for("the local APIServices", Duration::from_secs(10), || {
            let out = s.kube_ok(&["get", "apiservices", "--no-headers"]);
            out.contains("v1.apps").then_some(out)
        });
    let core: Vec<&str> = services
        .lines()
        .find(|l| l.starts_with("v1. "))
        .unwrap()
        .split_whitespace()
        .take(3)
        .collect();
    assert_eq!(core, ["v1.", "Local", "True"]);
}

#[test]
fn duplicate_fields_are_refused_under_strict_validation_and_warned_about_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let body = write(
        dir.path(),
        "dup.json",
        r#"{"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "my-dep", "labels": {"app": "nginx"}},
            "spec": {"unknownField": "foo", "replicas": 2, "replicas": 3,
                     "selector": {"matchLabels": {"app": "nginx"}},
                     "template": {"metadata": {"labels": {"app": "nginx"}},
                                  "spec": {"containers": [{"name": "nginx", "image": "nginx:latest"}]}}}}"#,
    );
    let err = s.kube_err(&[
        "create",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict",
        "-f",
        &body,
    ]);
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.unknownField", duplicate field "spec.replicas""#),
        "{err}"
    );
    let out = s.kubectl(&[
        "create",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Warn",
        "-f",
        &body,
    ]);
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.contains(r#"duplicate field "spec.replicas""#),
        "{warnings}"
    );
    // The last value wins, as in kube.
    assert_eq!(
        s.kube_ok(&["get", "deploy", "my-dep", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
}

#[test]
fn reviews_have_no_table_form() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let review = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"nonResourceAttributes": {"path": "/", "verb": "get"}}}"#;
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (body, code) = admin_curl_post(
        &s,
        path,
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        Some(review),
    );
    assert_eq!(code, "406", "{body}");
    assert!(body.contains("\"reason\":\"NotAcceptable\""), "{body}");
    let (body, code) = admin_curl_post(&s, path, "application/json", Some(review));
    assert_eq!(code, "201", "{body}");
    assert!(body.contains("\"allowed\":true"), "{body}");
}

#[test]
fn updates_get_the_kinds_defaults_as_creates_do() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let deployment = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n"
        )
    };
    s.kube_ok(&[
        "create",
        "-f",
        &write(dir.path(), "d1.yaml", &deployment("busybox:1")),
    ]);
    // A PUT of the bare object: its defaults (restartPolicy, dnsPolicy, strategy...) are
    // filled in before validation, as on create.
    s.kube_ok(&[
        "replace",
        "-f",
        &write(dir.path(), "d2.yaml", &deployment("busybox:2")),
    ]);
    assert_eq!(
        s.kube_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.restartPolicy} {.spec.template.spec.containers[0].image} {.spec.strategy.type}",
        ]),
        "Always busybox:2 RollingUpdate"
    );
}
