//! kubectl v1.32 against `krab server --disable-agent`: what works of the API server so far.
use std::process::Stdio;
use std::time::Duration;

use crate::support::{write, Server};

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels: {app: web}
data:
  a: \"1\"
  b: \"2\"
";

#[test]
fn kubectl_sees_the_system_namespaces_as_kube_apiserver_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let mode = std::fs::metadata(s.kubeconfig()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let out = s.kube_ok(&["get", "ns"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "STATUS", "AGE"]
    );
    for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(ns) && l.contains("Active")),
            "{out}"
        );
    }
    let version = s.kube_ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "32");
    // `kubectl auth whoami` names the admin certificate's user and groups.
    let me = s.kube_ok(&["auth", "whoami"]);
    assert!(
        me.contains("system:admin") && me.contains("[system:masters system:authenticated]"),
        "{me}"
    );
    // The default namespace cannot be deleted.
    let err = s.kube_err(&["delete", "ns", "default"]);
    assert!(err.contains("this namespace may not be deleted"), "{err}");
}

#[test]
fn configmaps_create_get_replace_delete_with_selectors_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(dir.path(), "cm.yaml", CM);
    assert!(s
        .kube_ok(&["create", "-f", &f])
        .contains("configmap/app-config created"));
    let err = s.kube_err(&["create", "-f", &f]);
    assert!(
        err.contains("AlreadyExists") || err.contains("already exists"),
        "{err}"
    );
    let out = s.kube_ok(&["get", "cm"]);
    assert_eq!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "DATA", "AGE"]
    );
    assert!(
        out.lines().nth(1).unwrap().starts_with("app-config"),
        "{out}"
    );
    assert!(
        out.lines().nth(1).unwrap().split_whitespace().nth(1) == Some("2"),
        "{out}"
    );
    assert_eq!(
        s.kube_ok(&["get", "cm", "-l", "app=web", "-o", "name"])
            .trim(),
        "configmap/app-config"
    );
    assert!(s
        .kube_ok(&["get", "cm", "-l", "app in (db)", "-o", "name"])
        .trim()
        .is_empty());
    assert_eq!(
        s.kube_ok(&["get", "cm", "app-config", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    // resourceVersion moves with each write; a stale one is a 409 Conflict.
    let json = s.kube_ok(&["get", "cm", "app-config", "-o", "json"]);
    let mut obj: serde_json::Value = serde_json::from_str(&json).unwrap();
    let uid = obj["metadata"]["uid"].clone();
    obj["data"]["a"] = serde_json::json!("changed");
    let updated = write(dir.path(), "updated.json", &obj.to_string());
    assert!(s.kube_ok(&["replace", "-f", &updated]).contains("replaced"));
    let err = s.kube_err(&["replace", "-f", &updated]);
    assert!(err.contains("the object has been modified"), "{err}");
    let after: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "cm", "app-config", "-o", "json"])).unwrap();
    assert_eq!(after["data"]["a"], "changed");
    assert_eq!(after["metadata"]["uid"], uid, "the server keeps the uid");
    // Nothing is created in a namespace that does not exist.
    let err = s.kube_err(&["create", "-f", &f, "-n", "nope"]);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    assert!(s
        .kube_ok(&["delete", "cm", "app-config"])
        .contains("deleted"));
    let err = s.kube_err(&["get", "cm", "app-config"]);
    assert!(err.contains("configmaps \"app-config\" not found"), "{err}");
}

#[test]
fn bad_input_gets_kube_style_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let bad_name = write(
        dir.path(),
        "bad.yaml",
        &CM.replace("name: app-config", "name: Bad_Name"),
    );
    let err = s.kube_err(&["create", "-f", &bad_name]);
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    let wrong_kind = write(
        dir.path(),
        "kind.json",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    );
    let raw = s.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &wrong_kind,
    ]);
    assert!(!raw.status.success());
    assert!(String::from_utf8_lossy(&raw.stderr).contains("does not match the expected kind"));
    let err = s.kube_err(&["get", "--raw", "/api/v1/namespaces/default/widgets"]);
    assert!(
        err.contains("NotFound") || err.contains("could not find"),
        "{err}"
    );
}

#[test]
fn watch_streams_changes_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(dir.path(), "cm.yaml", CM);
    let mut cmd = std::process::Command::new("kubectl");
    cmd.env("KUBECONFIG", s.kubeconfig())
        .args(["get", "cm", "--watch", "-o", "name", "--request-timeout=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watch = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.kube_ok(&["create", "-f", &f]);
    let changed = write(
        dir.path(),
        "changed.yaml",
        &CM.replace("a: \"1\"", "a: \"3\""),
    );
    s.kube_ok(&["replace", "-f", &changed]);
    s.kube_ok(&["delete", "cm", "app-config"]);
    std::thread::sleep(Duration::from_millis(700));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Added, modified, deleted: three events for the object.
    assert_eq!(
        text.lines()
            .filter(|l| *l == "configmap/app-config")
            .count(),
        3,
        "{text}"
    );
}

#[test]
fn callers_without_a_client_certificate_get_401_except_for_health() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let url = format!("https://127.0.0.1:{}", s.api_port);
    let anon = |path: &str| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sk", "-w", "\n%{http_code}"])
            .arg(format!("{url}{path}"));
        let out = crate::support::run_bounded(cmd, Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for open in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(anon(open), "ok\n200", "{open}");
    }
    assert!(anon("/version").ends_with("200"));
    let verbose = anon("/readyz?verbose");
    assert!(
        verbose.contains("[+]etcd ok")
            && verbose.contains("readyz check passed")
            && verbose.ends_with("200"),
        "{verbose}"
    );
    assert!(anon("/readyz/etcd").ends_with("200"));
    assert!(anon("/readyz/nope").ends_with("404"));
    let denied = anon("/api/v1/namespaces");
    assert!(denied.ends_with("401"), "{denied}");
    assert!(denied.contains("\"reason\":\"Unauthorized\""), "{denied}");
}

#[test]
fn label_annotate_and_patch_of_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(dir.path(), "cm.yaml", CM);
    s.kube_ok(&["create", "-f", &f]);
    s.kube_ok(&["label", "cm", "app-config", "tier=front"]);
    s.kube_ok(&["annotate", "cm", "app-config", "note=hello"]);
    s.kube_ok(&["label", "cm", "app-config", "app-"]);
    s.kube_ok(&[
        "patch",
        "cm",
        "app-config",
        "--type=merge",
        "-p",
        r#"{"data":{"b":null,"c":"3"}}"#,
    ]);
    s.kube_ok(&[
        "patch",
        "cm",
        "app-config",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"9"}]"#,
    ]);
    s.kube_ok(&[
        "patch",
        "cm",
        "app-config",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/x"]}}"#,
    ]);
    let obj: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "cm", "app-config", "-o", "json"])).unwrap();
    assert_eq!(
        obj["metadata"]["labels"],
        serde_json::json!({"tier": "front"})
    );
    assert_eq!(obj["metadata"]["annotations"]["note"], "hello");
    assert_eq!(obj["data"], serde_json::json!({"a": "9", "c": "3"}));
    assert_eq!(
        obj["metadata"]["finalizers"],
        serde_json::json!(["example.com/x"])
    );
    let err = s.kube_err(&[
        "patch",
        "cm",
        "app-config",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/a","value":"no"}]"#,
    ]);
    assert!(err.contains("test failed"), "{err}");
    let err = s.kube_err(&["patch", "cm", "missing", "--type=merge", "-p", "{}"]);
    assert!(err.contains("configmaps \"missing\" not found"), "{err}");
}

/// The current store revision, through etcdctl.
fn store_revision(s: &Server) -> i64 {
    let out = s.ok(&["get", "x", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

#[test]
fn lists_paginate_on_one_revision_and_expire_with_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), crate::support::QUIET);
    // (No loops: this test counts revisions and keys.)
    let mut docs = String::new();
    for i in 0..5 {
        docs.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  labels: {{grp: \"{}\"}}\n",
            i % 2
        ));
    }
    let f = write(dir.path(), "many.yaml", &docs);
    s.kube_ok(&["create", "-f", &f]);
    // kubectl's chunked list follows continue tokens to the end.
    let out = s.kube_ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(out.lines().count(), 5, "{out}");
    let out = s.kube_ok(&["get", "cm", "--chunk-size=1", "-l", "grp=1", "-o", "name"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["configmap/cm-1", "configmap/cm-3"]
    );
    // Pages after the first read the first page's revision: a later write does not show.
    let first: serde_json::Value = serde_json::from_str(&s.kube_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2",
    ]))
    .unwrap();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    s.kube_ok(&["delete", "cm", "cm-4"]);
    let rest: serde_json::Value = serde_json::from_str(&s.kube_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={token}"),
    ]))
    .unwrap();
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cm-2", "cm-3", "cm-4"]);
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    assert!(rest["metadata"].get("continue").is_none());
    // Once that revision is compacted the token is 410 Gone.
    s.ok(&["compaction", &store_revision(&s).to_string()]);
    let err = s.kube_err(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={token}"),
    ]);
    assert!(
        err.contains("too old") || err.contains("Expired") || err.contains("410"),
        "{err}"
    );
}

#[test]
fn secrets_fold_string_data_and_service_accounts_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(
        dir.path(),
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {user: admin}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n",
    );
    s.kube_ok(&["create", "-f", &f]);
    assert_eq!(
        s.kube_ok(&["get", "secret", "creds", "-o", "jsonpath={.data.user}"]),
        "YWRtaW4="
    );
    assert_eq!(
        s.kube_ok(&["get", "secret", "creds", "-o", "jsonpath={.type}"]),
        "Opaque"
    );
    let out = s.kube_ok(&["get", "secrets"]);
    assert_eq!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "TYPE", "DATA", "AGE"]
    );
    assert!(s.kube_ok(&["get", "sa"]).contains("robot"));
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ndata: {k: \"not base64!\"}\n",
    );
    let err = s.kube_err(&["create", "-f", &bad]);
    assert!(err.contains("illegal base64"), "{err}");
}

#[test]
fn apply_twice_is_unchanged_and_server_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let f = write(dir.path(), "cm.yaml", CM);
    assert!(s.kube_ok(&["apply", "-f", &f]).contains("created"));
    assert!(s.kube_ok(&["apply", "-f", &f]).contains("unchanged"));
    let rv = s.kube_ok(&[
        "get",
        "cm",
        "app-config",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let changed = write(
        dir.path(),
        "changed.yaml",
        &CM.replace("a: \"1\"", "a: \"5\""),
    );
    assert!(s
        .kube_ok(&[
            "apply",
            "-f",
            &changed,
            "--validate=false",
            "--dry-run=server"
        ])
        .contains("server dry run"));
    assert_eq!(
        s.kube_ok(&["get", "cm", "app-config", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    assert_eq!(
        s.kube_ok(&[
            "get",
            "cm",
            "app-config",
            "-o",
            "jsonpath={.metadata.resourceVersion}"
        ]),
        rv
    );
    let other = write(
        dir.path(),
        "other.yaml",
        &CM.replace("name: app-config", "name: other"),
    );
    s.kube_ok(&[
        "create",
        "-f",
        &other,
        "--validate=false",
        "--dry-run=server",
    ]);
    assert!(s.kube_err(&["get", "cm", "other"]).contains("not found"));
    s.kube_ok(&["delete", "cm", "app-config", "--dry-run=server"]);
    s.kube_ok(&["get", "cm", "app-config"]);
    assert!(s.kube_ok(&["apply", "-f", &changed]).contains("configured"));
    assert_eq!(
        s.kube_ok(&["get", "cm", "app-config", "-o", "jsonpath={.data.a}"]),
        "5"
    );
}

#[test]
fn api_groups_are_discovered_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let resources = s.kube_ok(&["api-resources", "--no-headers"]);
    for want in [
        "namespaces",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "leases",
    ] {
        assert!(
            resources.lines().any(|l| l.starts_with(want)),
            "{want} missing:\n{resources}"
        );
    }
    let versions = s.kube_ok(&["api-versions"]);
    assert!(
        versions.lines().any(|l| l == "coordination.k8s.io/v1"),
        "{versions}"
    );
    assert!(versions.lines().any(|l| l == "v1"), "{versions}");
    let lease = write(
        dir.path(),
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: node-a, namespace: kube-node-lease}\nspec: {holderIdentity: node-a, leaseDurationSeconds: 40}\n",
    );
    s.kube_ok(&["create", "-f", &lease]);
    let out = s.kube_ok(&["get", "leases", "-n", "kube-node-lease"]);
    assert_eq!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "HOLDER", "AGE"]
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["node-a", "node-a"], "{out}");
    // Stored where kube-apiserver keeps it.
    let keys = s.ok(&["get", "/registry/leases/", "--prefix", "--keys-only"]);
    assert!(
        keys.contains("/registry/leases/kube-node-lease/node-a"),
        "{keys}"
    );
}

/// kubectl validates a `List` (which no v3 document describes) against the v2 document, and
/// asks for it only in gnostic's protobuf form.
#[test]
fn lists_are_validated_against_the_openapi_v2_protobuf_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let list = "apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: one}, data: {a: \"1\"}}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: two}, data: {a: \"2\"}}
";
    let f = write(dir.path(), "list.yaml", list);
    let out = s.kube_ok(&["create", "-f", &f]);
    assert!(out.contains("configmap/one created") && out.contains("configmap/two created"));
    let bad = write(
        dir.path(),
        "bad.yaml",
        &list
            .replace("name: one}, data", "name: three}, datta")
            .replace("name: two", "name: four"),
    );
    let err = s.kube_err(&["apply", "-f", &bad]);
    assert!(
        err.contains("unknown field \"datta\" in io.k8s.api.core.v1.ConfigMap"),
        "{err}"
    );
    assert!(s.kube_err(&["get", "cm", "four"]).contains("not found"));
    let explained = s.kube_ok(&[
        "explain",
        "pods.spec.containers.ports",
        "--output=plaintext-openapiv2",
    ]);
    assert!(
        explained.contains("RESOURCE: ports <[]Object>"),
        "{explained}"
    );
    assert!(
        explained.contains("containerPort\t<integer> -required-"),
        "{explained}"
    );
}
