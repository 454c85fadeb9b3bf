//! RBAC against `krab server --disable-agent`: the default policy, a service account denied
//! until a RoleBinding grants it a role (with kube-apiserver's Forbidden message), and
//! `kubectl auth can-i` answered through SelfSubjectAccessReview and SelfSubjectRulesReview.
use std::process::Command;
use std::time::Duration;

use crate::support::{run_bounded, wait_for, Server};

/// kubectl as the holder of `token` only.
fn as_token(s: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("kubectl");
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server=https://127.0.0.1:{}", s.api_port))
        .arg("--insecure-skip-tls-verify")
        .arg(format!("--token={token}"))
        .args(args);
    let out = run_bounded(cmd, Duration::from_secs(30));
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
