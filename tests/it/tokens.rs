//! Service-account tokens against `krab server --disable-agent`: TokenRequest through
//! `kubectl create token`, bearer authentication of bound and legacy secret tokens, and
//! tokens refused once what they were issued for is gone.
use std::process::Command;
use std::time::Duration;

use crate::support::{run_bounded, wait_for, write, Server};

/// kubectl as the holder of `token`: success and stdout+stderr.
fn as_token(s: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = s.kubectl_with_token(token, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn whoami(s: &Server, token: &str) -> (bool, String) {
    as_token(
        s,
        token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )
}

#[test]
fn bound_tokens_authenticate_until_their_objects_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    wait_for(
        "the default service account",
        Duration::from_secs(20),
        || {
            s.kubectl(&["get", "sa", "default"])
                .status
                .success()
                .then_some(())
        },
    );

    let token = s.kube_ok(&["create", "token", "default"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let (ok, who) = whoami(&s, token);
    assert!(ok, "{who}");
    assert_eq!(who, "system:serviceaccount:default:default");
    // The token carries no more than the service account's identity.
    let (ok, groups) = as_token(
        &s,
        token,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
    );
    assert!(
        ok && groups.contains("system:serviceaccounts:default"),
        "{groups}"
    );

    // A forged signature, or a token of another audience, is refused with 401.
    let mut forged = token.to_string();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (ok, msg) = whoami(&s, &forged);
    assert!(!ok && msg.contains("Unauthorized"), "{msg}");
    let other = s.kube_ok(&["create", "token", "default", "--audience=vault"]);
    let (ok, msg) = whoami(&s, other.trim());
    assert!(!ok && msg.contains("Unauthorized"), "{msg}");

    // kube-apiserver's bounds on the duration.
    let err = s.kube_err(&["create", "token", "default", "--duration=5m"]);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = s.kube_err(&["create", "token", "nobody"]);
    assert!(
        err.contains("serviceaccounts \"nobody\" not found"),
        "{err}"
    );

    // Bound to a pod: valid while the pod lives, refused once it is gone.
    let pod = write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: holder}\nspec:\n  containers:\n  - {name: c, image: busybox}\n",
    );
    s.kube_ok(&["apply", "-f", &pod]);
    let bound = s.kube_ok(&[
        "create",
        "token",
        "default",
        "--bound-object-kind=Pod",
        "--bound-object-name=holder",
    ]);
    let bound = bound.trim().to_string();
    assert!(whoami(&s, &bound).0);
    let err = s.kube_err(&[
        "create",
        "token",
        "default",
        "--bound-object-kind=Pod",
        "--bound-object-name=holder",
        "--bound-object-uid=00000000-0000-0000-0000-000000000000",
    ]);
    assert!(err.contains("does not match the UID in record"), "{err}");
    s.kube_ok(&["delete", "pod", "holder", "--grace-period=0", "--force"]);
    wait_for(
        "the pod-bound token to be refused",
        Duration::from_secs(30),
        || (!whoami(&s, &bound).0).then_some(()),
    );

    // A service account deleted and recreated has a new uid: its old tokens are refused.
    s.kube_ok(&["create", "sa", "robot"]);
    let robot = s.kube_ok(&["create", "token", "robot"]);
    let robot = robot.trim().to_string();
    assert_eq!(whoami(&s, &robot).1, "system:serviceaccount:default:robot");
    s.kube_ok(&["delete", "sa", "robot"]);
    s.kube_ok(&["create", "sa", "robot"]);
    wait_for(
        "the old robot token to be refused",
        Duration::from_secs(30),
        || (!whoami(&s, &robot).0).then_some(()),
    );

    // The issuer's keys are published for OIDC discovery.
    let jwks = s.kube_ok(&["get", "--raw", "/openid/v1/jwks"]);
    assert!(
        jwks.contains("\"kty\":\"EC\"") && jwks.contains("\"alg\":\"ES256\""),
        "{jwks}"
    );
    let conf = s.kube_ok(&["get", "--raw", "/.well-known/openid-configuration"]);
    assert!(
        conf.contains("\"issuer\":\"https://kubernetes.default.svc.cluster.local\""),
        "{conf}"
    );
}

#[test]
fn legacy_token_secrets_are_filled_and_authenticate_while_they_exist() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    s.kube_ok(&["create", "sa", "builder"]);
    let secret = write(
        dir.path(),
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: builder-token\n  annotations:\n    kubernetes.io/service-account.name: builder\ntype: kubernetes.io/service-account-token\n",
    );
    s.kube_ok(&["apply", "-f", &secret]);
    let token = wait_for("the token controller", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "secret",
            "builder-token",
            "-o",
            "jsonpath={.data.token}",
        ]);
        (!out.is_empty()).then_some(out)
    });
    let ca = s.kube_ok(&[
        "get",
        "secret",
        "builder-token",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(!ca.is_empty());
    let mut decode = Command::new("base64");
    decode.arg("-d").arg(write(dir.path(), "t.b64", &token));
    let token = String::from_utf8(run_bounded(decode, Duration::from_secs(5)).stdout).unwrap();
    let (ok, who) = whoami(&s, &token);
    assert!(ok, "{who}");
    assert_eq!(who, "system:serviceaccount:default:builder");

    s.kube_ok(&["delete", "secret", "builder-token"]);
    wait_for(
        "the legacy token to be refused",
        Duration::from_secs(30),
        || (!whoami(&s, &token).0).then_some(()),
    );

    // A token secret for a service account that does not exist is removed.
    let stray = write(
        dir.path(),
        "stray.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: stray\n  annotations:\n    kubernetes.io/service-account.name: ghost\ntype: kubernetes.io/service-account-token\n",
    );
    s.kube_ok(&["apply", "-f", &stray]);
    wait_for(
        "the stray token secret to be deleted",
        Duration::from_secs(30),
        || (!s.kubectl(&["get", "secret", "stray"]).status.success()).then_some(()),
    );
}
