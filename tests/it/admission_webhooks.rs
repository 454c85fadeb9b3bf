//! Admission webhooks through real kubectl against `krab server --disable-agent`: the test
//! serves the webhooks itself over HTTPS (its own CA, given as `caBundle`) and checks what
//! kube documents: denials with the webhook's message, JSON patches applied, UPDATE and
//! DELETE sent, namespace selectors, dry runs, timeouts under both failure policies, and
//! that a webhook cannot block changes to webhook configurations.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};

use crate::support::{write, Server};

/// The reviews the webhook server received.
type Seen = Arc<Mutex<Vec<Value>>>;

fn answer(path: &str, review: &Value) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    let data = &req["object"]["data"];
    let allowed = json!({"uid": uid, "allowed": true});
    match path {
        "/validate" => {
            if data["webhook-e2e-test"] == "webhook-disallow" {
                json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": "the configmap contains unwanted key and value"}})
            } else {
                allowed
            }
        }
        "/mutate" => {
            let patch = if data.is_object() {
                json!([{"op": "add", "path": "/data/mutation-stage-1", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/data", "value": {"mutation-stage-1": "yes"}}])
            };
            let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
        }
        "/protect" => {
            let protected = req["oldObject"]["metadata"]["labels"]["protected"] == "yes";
            if req["operation"] == "DELETE" && protected {
                json!({"uid": uid, "allowed": false, "status": {"message": "this configmap is protected"}})
            } else {
                allowed
            }
        }
        "/connect" => {
            let what = format!(
                "{} {} {}",
                req["operation"].as_str().unwrap_or(""),
                req["kind"]["kind"].as_str().unwrap_or(""),
                req["object"]["command"][0].as_str().unwrap_or("")
            );
            json!({"uid": uid, "allowed": false, "status": {"message": format!("{what}: exec to pod '{}' is not allowed", req["name"].as_str().unwrap_or(""))}})
        }
        "/deny-all" => json!({"uid": uid, "allowed": false}),
        _ => allowed,
    }
}

/// Serves the webhooks on 127.0.0.1 with a certificate from a fresh CA; returns the port
/// and the CA (PEM).
fn serve_webhooks(rt: &tokio::runtime::Runtime, seen: Seen) -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                            seen.lock().unwrap().push(review.clone());
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            let out = json!({
                                "apiVersion": "admission.k8s.io/v1",
                                "kind": "AdmissionReview",
                                "response": answer(&path, &review),
                            });
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                out.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

fn webhook(name: &str, port: u16, ca: &str, path: &str, extra: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        r#"- name: {name}
  clientConfig:
    url: https://127.0.0.1:{port}{path}
    caBundle: {ca}
  sideEffects: None
  admissionReviewVersions: ["v1"]
{extra}"#
    )
}

const CONFIGMAP_RULES: &str = r#"  rules:
  - operations: ["CREATE", "UPDATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["configmaps"]
  namespaceSelector:
    matchExpressions:
    - {key: skip-webhook, operator: DoesNotExist}
"#;

fn configmap(name: &str, ns: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  {key}: {value}\n"
    )
}

#[test]
fn webhooks_deny_mutate_and_fail_as_kube_documents() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Arc::default();
    let (port, ca) = serve_webhooks(&rt, seen.clone());
    let configs = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: deny-configmaps\nwebhooks:\n{}{}---\napiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: mutate-configmaps\nwebhooks:\n{}",
        webhook("deny-cm.krab.test", port, &ca, "/validate", CONFIGMAP_RULES),
        webhook(
            "protect-cm.krab.test",
            port,
            &ca,
            "/protect",
            "  rules:\n  - operations: [\"DELETE\"]\n    apiGroups: [\"\"]\n    apiVersions: [\"v1\"]\n    resources: [\"configmaps\"]\n"
        ),
        webhook("mutate-cm.krab.test", port, &ca, "/mutate", CONFIGMAP_RULES),
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "configs.yaml", &configs)]);
    // The webhook configurations are followed in memory: wait until a denial shows.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &configmap("bad", "default", "webhook-e2e-test", "webhook-disallow"),
    );
    crate::support::wait_for("the webhooks in effect", Duration::from_secs(20), || {
        let out = s.kubectl(&["create", "--dry-run=server", "-f", &bad]);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    let err = s.kube_err(&["create", "-f", &bad]);
    assert!(
        err.contains("admission webhook \"deny-cm.krab.test\" denied the request: the configmap contains unwanted key and value"),
        "{err}"
    );
    // An allowed create is mutated; the webhooks saw who asked.
    let good = write(
        dir.path(),
        "good.yaml",
        &configmap("good", "default", "plain", "value"),
    );
    s.kube_ok(&["create", "-f", &good]);
    assert_eq!(
        s.kube_ok(&[
            "get",
            "cm",
            "good",
            "-o",
            "jsonpath={.data.mutation-stage-1}"
        ]),
        "yes"
    );
    {
        let seen = seen.lock().unwrap();
        let review = seen
            .iter()
            .find(|r| r["request"]["name"] == "good" && r["request"]["operation"] == "CREATE")
            .expect("the create was reviewed");
        assert_eq!(review["request"]["userInfo"]["username"], "system:admin");
        assert_eq!(review["request"]["resource"]["resource"], "configmaps");
        assert_eq!(review["request"]["namespace"], "default");
        assert_eq!(review["request"]["dryRun"], false);
    }
    // UPDATE is reviewed too.
    let err = s.kube_err(&[
        "patch",
        "cm",
        "good",
        "-p",
        r#"{"data":{"webhook-e2e-test":"webhook-disallow"}}"#,
    ]);
    assert!(err.contains("denied the request"), "{err}");
    // A namespace the selector leaves out is not reviewed.
    s.kube_ok(&["create", "namespace", "skipped"]);
    s.kube_ok(&["label", "namespace", "skipped", "skip-webhook=yes"]);
    s.kube_ok(&[
        "create",
        "-f",
        &write(
            dir.path(),
            "skipped.yaml",
            &configmap("bad", "skipped", "webhook-e2e-test", "webhook-disallow"),
        ),
    ]);
    // Dry runs reach webhooks without side effects, marked as such; nothing is stored.
    s.kube_ok(&[
        "create",
        "cm",
        "dry",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r["request"]["name"] == "dry" && r["request"]["dryRun"] == true));
    assert!(s.kube_err(&["get", "cm", "dry"]).contains("not found"));
    // DELETE is reviewed with the old object.
    s.kube_ok(&["label", "cm", "good", "protected=yes"]);
    let err = s.kube_err(&["delete", "cm", "good"]);
    assert!(
        err.contains("admission webhook \"protect-cm.krab.test\" denied the request: this configmap is protected"),
        "{err}"
    );
    s.kube_ok(&["label", "cm", "good", "protected-"]);
    s.kube_ok(&["delete", "cm", "good"]);

    // CONNECTs are reviewed with their options.
    let connect = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: deny-exec\nwebhooks:\n{}",
        webhook(
            "deny-exec.krab.test",
            port,
            &ca,
            "/connect",
            "  rules:\n  - operations: [\"CONNECT\"]\n    apiGroups: [\"\"]\n    apiVersions: [\"v1\"]\n    resources: [\"pods/exec\", \"pods/attach\"]\n"
        )
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "connect.yaml", &connect)]);
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "pod.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: target\nspec:\n  nodeName: elsewhere\n  containers:\n  - name: c\n    image: busybox\n",
        ),
    ]);
    let err = crate::support::wait_for(
        "the exec webhook in effect",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&["exec", "target", "--", "ls"]);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            err.contains("denied the request").then_some(err)
        },
    );
    assert!(
        err.contains("admission webhook \"deny-exec.krab.test\" denied the request: CONNECT PodExecOptions ls: exec to pod 'target' is not allowed"),
        "{err}"
    );

    // A webhook that does not answer in time fails the request under Fail, not under Ignore.
    let slow = |policy: &str, resource: &str| {
        format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: slow-{resource}\nwebhooks:\n{}",
            webhook(
                &format!("slow-{resource}.krab.test"),
                port,
                &ca,
                "/slow",
                &format!("  timeoutSeconds: 1\n  failurePolicy: {policy}\n  rules:\n  - operations: [\"CREATE\"]\n    apiGroups: [\"\"]\n    apiVersions: [\"v1\"]\n    resources: [\"{resource}\"]\n")
            )
        )
    };
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "slow.yaml",
            &format!(
                "{}---\n{}",
                slow("Fail", "secrets"),
                slow("Ignore", "serviceaccounts")
            ),
        ),
    ]);
    let err = crate::support::wait_for(
        "the slow webhook in effect",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&[
                "create",
                "secret",
                "generic",
                "s1",
                "--from-literal=a=b",
                "--dry-run=server",
            ]);
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );
    assert!(
        err.contains("Internal error occurred: failed calling webhook \"slow-secrets.krab.test\"")
            && err.contains("context deadline exceeded"),
        "{err}"
    );
    s.kube_ok(&["create", "serviceaccount", "sa1"]);

    // A webhook denying everything cannot keep its configuration from being removed.
    let deny_all = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: deny-all\nwebhooks:\n{}",
        webhook(
            "deny-all.krab.test",
            port,
            &ca,
            "/deny-all",
            "  rules:\n  - operations: [\"*\"]\n    apiGroups: [\"*\"]\n    apiVersions: [\"*\"]\n    resources: [\"*/*\"]\n"
        )
    );
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "deny-all.yaml", &deny_all),
    ]);
    let err = crate::support::wait_for(
        "the deny-all webhook in effect",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&[
                "create",
                "cm",
                "any",
                "--from-literal=a=b",
                "--dry-run=server",
            ]);
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );
    assert!(
        err.contains(
            "admission webhook \"deny-all.krab.test\" denied the request without explanation"
        ),
        "{err}"
    );
    s.kube_ok(&[
        "delete",
        "validatingwebhookconfiguration",
        "deny-all",
        "slow-secrets",
        "deny-configmaps",
    ]);
    crate::support::wait_for("the webhooks gone", Duration::from_secs(20), || {
        s.kubectl(&[
            "create",
            "cm",
            "after",
            "--from-literal=webhook-e2e-test=webhook-disallow",
        ])
        .status
        .success()
        .then_some(())
    });
}
