//! RBAC against `krab server --disable-agent`: the default policy, a service account denied
//! until a RoleBinding grants it a role (with kube-apiserver's Forbidden message), and
//! `kubectl auth can-i` answered through SelfSubjectAccessReview and SelfSubjectRulesReview.
use std::process::Command;
use std::time::Duration;

use crate::support::{run_bounded, wait_for, Server};

/// kubectl as the holder of `token`: success, stdout, stderr.
fn as_token(s: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = s.kubectl_with_token(token, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn service_accounts_get_what_their_bindings_grant_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let roles = s.kube_ok(&["get", "clusterroles", "-o", "name"]);
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:node",
    ] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}\n")),
            "{r}: {roles}"
        );
    }
    assert_eq!(s.kube_ok(&["auth", "can-i", "*", "*"]), "yes\n");

    s.kube_ok(&["create", "namespace", "team"]);
    s.kube_ok(&["-n", "team", "create", "serviceaccount", "robot"]);
    let token = s.kube_ok(&["-n", "team", "create", "token", "robot"]);
    let token = token.trim();

    let (ok, _, err) = as_token(&s, token, &["-n", "team", "get", "pods"]);
    assert!(!ok);
    assert!(
        err.contains("pods is forbidden: User \"system:serviceaccount:team:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""),
        "{err}"
    );
    let (ok, out, _) = as_token(&s, token, &["-n", "team", "auth", "can-i", "list", "pods"]);
    assert!(!ok && out.trim() == "no", "{out}");
    // Discovery and whoami are everyone's.
    let (ok, out, err) = as_token(
        &s,
        token,
        &["api-resources", "--api-group=apps", "-o", "name"],
    );
    assert!(ok && out.contains("deployments.apps"), "{out}{err}");
    let (ok, out, _) = as_token(
        &s,
        token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(ok && out == "system:serviceaccount:team:robot", "{out}");

    s.kube_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=team:robot",
    ]);
    wait_for(
        "the binding to take effect",
        Duration::from_secs(10),
        || {
            as_token(&s, token, &["-n", "team", "get", "pods"])
                .0
                .then_some(())
        },
    );
    let (ok, out, _) = as_token(&s, token, &["-n", "team", "auth", "can-i", "list", "pods"]);
    assert!(ok && out.trim() == "yes", "{out}");
    // view does not read secrets, write anything, or reach other namespaces.
    let (ok, _, err) = as_token(&s, token, &["-n", "team", "get", "secrets"]);
    assert!(
        !ok && err.contains("cannot list resource \"secrets\""),
        "{err}"
    );
    let (ok, _, err) = as_token(&s, token, &["-n", "team", "create", "configmap", "x"]);
    assert!(
        !ok && err.contains("cannot create resource \"configmaps\""),
        "{err}"
    );
    let (ok, _, err) = as_token(&s, token, &["-n", "default", "get", "pods"]);
    assert!(!ok && err.contains("in the namespace \"default\""), "{err}");
    let (ok, _, err) = as_token(&s, token, &["get", "nodes"]);
    assert!(!ok && err.contains("at the cluster scope"), "{err}");
    let (ok, out, err) = as_token(&s, token, &["-n", "team", "auth", "can-i", "--list"]);
    assert!(ok && out.contains("pods "), "{out}{err}");

    // Removing the binding takes the access away again.
    s.kube_ok(&["-n", "team", "delete", "rolebinding", "robot-view"]);
    wait_for("the binding to be gone", Duration::from_secs(10), || {
        (!as_token(&s, token, &["-n", "team", "get", "pods"]).0).then_some(())
    });
}

/// kubectl with a node's client certificate, obtained as a joining agent obtains it.
fn node_kubectl(
    s: &Server,
    dir: &std::path::Path,
    node: &str,
) -> impl Fn(&[&str]) -> (bool, String) {
    let token = std::fs::read_to_string(s.data_dir.join("server/node-token")).unwrap();
    let secret = token.trim().rsplit(':').next().unwrap().to_string();
    let mut curl = Command::new("curl");
    curl.args(["-sk", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {secret}"))
        .arg("--data")
        .arg(format!(
            "{{\"nodeName\":\"{node}\",\"addresses\":[\"127.0.0.1\"]}}"
        ))
        .arg(format!(
            "https://127.0.0.1:{}/v1-krab/node-credentials",
            s.api_port
        ));
    let out = run_bounded(curl, Duration::from_secs(20));
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cert = dir.join(format!("{node}.crt"));
    let key = dir.join(format!("{node}.key"));
    std::fs::write(&cert, creds["clientCertificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key, creds["clientKey"].as_str().unwrap()).unwrap();
    let port = s.api_port;
    move |args: &[&str]| {
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server=https://127.0.0.1:{port}"))
            .arg("--insecure-skip-tls-verify")
            .arg(format!("--client-certificate={}", cert.display()))
            .arg(format!("--client-key={}", key.display()))
            .args(args);
        let out = run_bounded(cmd, Duration::from_secs(30));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

#[test]
fn nodes_reach_only_what_their_pods_reference_and_their_own_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-scheduler"]);
    s.kube_ok(&["create", "secret", "generic", "mine", "--from-literal=a=1"]);
    s.kube_ok(&[
        "create",
        "secret",
        "generic",
        "theirs",
        "--from-literal=a=2",
    ]);
    let pod = crate::support::write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: busybox\n    env:\n    - name: A\n      valueFrom: {secretKeyRef: {name: mine, key: a}}\n",
    );
    s.kube_ok(&["apply", "-f", &pod]);
    let n1 = node_kubectl(&s, dir.path(), "n1");
    let n2 = node_kubectl(&s, dir.path(), "n2");
    let (ok, out) = n1(&["get", "secret", "mine", "-o", "jsonpath={.data.a}"]);
    assert!(ok && out == "MQ==", "{out}");
    let (ok, out) = n1(&["get", "secret", "theirs"]);
    assert!(
        !ok && out.contains("User \"system:node:n1\" cannot get resource \"secrets\""),
        "{out}"
    );
    let (ok, out) = n1(&["get", "secrets"]);
    assert!(
        !ok && out.contains("cannot list resource \"secrets\""),
        "{out}"
    );
    let (ok, out) = n2(&["get", "secret", "mine"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    // Pods: a node writes the status of its own pods only; it may read pods.
    let (ok, out) = n2(&["delete", "pod", "p"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    assert!(n2(&["get", "pods"]).0);
    // Nodes: its own, not another's.
    let node = |name: &str| {
        format!("{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\"}}}}")
    };
    let n1_file = crate::support::write(dir.path(), "n1.json", &node("n1"));
    assert!(n1(&["create", "-f", &n1_file]).0);
    let (ok, out) = n2(&["label", "node", "n1", "x=y"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    assert!(n1(&["label", "node", "n1", "x=y"]).0);
    // NodeRestriction: no role labels from a kubelet, though an admin may give them.
    let (ok, out) = n1(&["label", "node", "n1", "node-role.kubernetes.io/worker=true"]);
    assert!(
        !ok && out.contains(
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify labels: node-role.kubernetes.io/worker"
        ),
        "{out}"
    );
    s.kube_ok(&["label", "node", "n1", "node-role.kubernetes.io/worker=true"]);
    assert!(n1(&["label", "node", "n1", "x=z", "--overwrite"]).0);
    // Only mirror pods bound to itself that reference nothing.
    let (ok, out) = n1(&["create", "-f", &pod]);
    assert!(
        !ok && out.contains("node \"n1\" can only create mirror pods"),
        "{out}"
    );
    let mirror = |node: &str, env: &str| {
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"m-{node}\",\
             \"annotations\":{{\"kubernetes.io/config.mirror\":\"h\"}}}},\"spec\":{{\"nodeName\":\"{node}\",\
             \"containers\":[{{\"name\":\"c\",\"image\":\"busybox\"{env}}}]}}}}"
        )
    };
    let own = crate::support::write(dir.path(), "m1.json", &mirror("n1", ""));
    let (ok, out) = n1(&["create", "-f", &own]);
    assert!(ok, "{out}");
    let other = crate::support::write(dir.path(), "m2.json", &mirror("n2", ""));
    let (ok, out) = n1(&["create", "-f", &other]);
    assert!(
        !ok && out.contains("can only create pods with spec.nodeName set to itself"),
        "{out}"
    );
    let secret_ref = crate::support::write(
        dir.path(),
        "m3.json",
        &mirror("n1", ",\"env\":[{\"name\":\"A\",\"valueFrom\":{\"secretKeyRef\":{\"name\":\"mine\",\"key\":\"a\"}}}]")
            .replace("m-n1", "m-secret"),
    );
    let (ok, out) = n1(&["create", "-f", &secret_ref]);
    assert!(
        !ok && out.contains("can not create pods that reference secrets"),
        "{out}"
    );
}

const WIDGETS: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-reader
  labels: {rbac.authorization.k8s.io/aggregate-to-view: 'true'}
rules:
- apiGroups: [example.com]
  resources: [widgets]
  verbs: [get, list, watch]
";

fn holds_widgets(s: &Server, role: &str) -> bool {
    s.kube_ok(&[
        "get",
        "clusterrole",
        role,
        "-o",
        "jsonpath={.rules[*].apiGroups}",
    ])
    .contains("example.com")
}

#[test]
fn roles_labelled_for_aggregation_extend_view_edit_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-scheduler"]);
    // view, edit and admin are aggregated roles, as on kube.
    let selector = s.kube_ok(&[
        "get",
        "clusterrole",
        "view",
        "-o",
        "jsonpath={.aggregationRule.clusterRoleSelectors[0].matchLabels}",
    ]);
    assert_eq!(
        selector,
        r#"{"rbac.authorization.k8s.io/aggregate-to-view":"true"}"#
    );
    let f = crate::support::write(dir.path(), "widgets.yaml", WIDGETS);
    s.kube_ok(&["apply", "-f", &f]);
    // view takes the rule, and through it edit, and through edit admin.
    for role in ["view", "edit", "admin"] {
        wait_for(
            &format!("{role} aggregating widgets"),
            Duration::from_secs(30),
            || holds_widgets(&s, role).then_some(()),
        );
    }
    // What view held before is still there.
    let view = s.kube_ok(&[
        "get",
        "clusterrole",
        "view",
        "-o",
        "jsonpath={.rules[*].resources}",
    ]);
    assert!(
        view.contains("deployments") && !view.contains("secrets"),
        "{view}"
    );
    // A user bound to view may now read widgets.
    s.kube_ok(&[
        "create",
        "rolebinding",
        "v",
        "--clusterrole=view",
        "--user=alice",
    ]);
    let sar = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"alice","resourceAttributes":{"verb":"list","group":"example.com","resource":"widgets","namespace":"default"}}}"#;
    let f = crate::support::write(dir.path(), "sar.json", sar);
    let allowed = |s: &Server| {
        s.kube_ok(&[
            "create",
            "--validate=false",
            "-f",
            &f,
            "-o",
            "jsonpath={.status.allowed}",
        ])
    };
    assert_eq!(allowed(&s), "true");
    // Gone again when the labelled role goes.
    s.kube_ok(&["delete", "clusterrole", "widgets-reader"]);
    for role in ["view", "edit", "admin"] {
        wait_for(
            &format!("{role} without widgets"),
            Duration::from_secs(30),
            || (!holds_widgets(&s, role)).then_some(()),
        );
    }
    assert_eq!(allowed(&s), "false");
}

#[test]
fn callers_allowed_to_impersonate_act_as_others_and_nobody_else_can() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--disable-scheduler"]);
    // The admin may impersonate: `kubectl auth can-i --as` answers for the loop's account.
    let sa = "--as=system:serviceaccount:kube-system:deployment-controller";
    assert_eq!(
        s.kube_ok(&["auth", "can-i", "create", "replicasets.apps", sa])
            .trim(),
        "yes"
    );
    let out = s.kubectl(&["auth", "can-i", "create", "pods", sa]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let who = s.kube_ok(&[
        "auth",
        "whoami",
        "--as=bob",
        "--as-group=devs",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert_eq!(who, r#"bob ["devs","system:authenticated"]"#);
    let err = s.kube_err(&["get", "pods", "--as=bob"]);
    assert!(
        err.contains(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{err}"
    );
    // A service account without the impersonate verb is refused, naming what it asked.
    s.kube_ok(&["create", "serviceaccount", "robot"]);
    let token = s.kube_ok(&["create", "token", "robot"]);
    let (ok, _, err) = as_token(&s, token.trim(), &["get", "pods", "--as=bob"]);
    assert!(!ok);
    assert!(
        err.contains(r#"users "bob" is forbidden: User "system:serviceaccount:default:robot" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );
    // Granted impersonation of bob alone, it may act as bob, and as nobody else.
    s.kube_ok(&[
        "create",
        "clusterrole",
        "impersonate-bob",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=bob",
    ]);
    s.kube_ok(&[
        "create",
        "clusterrolebinding",
        "robot-as-bob",
        "--clusterrole=impersonate-bob",
        "--serviceaccount=default:robot",
    ]);
    wait_for(
        "the robot impersonating bob",
        Duration::from_secs(15),
        || {
            let (ok, out, _) = as_token(
                &s,
                token.trim(),
                &[
                    "auth",
                    "whoami",
                    "--as=bob",
                    "-o",
                    "jsonpath={.status.userInfo.username}",
                ],
            );
            (ok && out == "bob").then_some(())
        },
    );
    let (ok, _, err) = as_token(&s, token.trim(), &["get", "pods", "--as=carol"]);
    assert!(
        !ok && err.contains(r#"users "carol" is forbidden"#),
        "{err}"
    );
    let (ok, _, err) = as_token(
        &s,
        token.trim(),
        &["get", "pods", "--as=bob", "--as-group=system:masters"],
    );
    assert!(
        !ok && err.contains(r#"groups "system:masters" is forbidden"#),
        "{err}"
    );
}
