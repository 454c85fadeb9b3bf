//! Persistent storage: the volume binder (static volumes bound to the smallest fitting
//! claim, pre-binding both ways, Released and Failed after the claim goes), the default
//! class given to claims that name none, and local-path provisioning — first against Node
//! objects the test registers, then with a real pod on the agent writing into its claim and
//! the directory removed after the claim is deleted.
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{wait_for, write, Server};
use crate::workloads::register_node;

fn jsonpath(s: &Server, args: &[&str], path: &str) -> String {
    let mut a: Vec<&str> = args.to_vec();
    let p = format!("jsonpath={path}");
    a.extend(["-o", &p]);
    s.kube_ok(&a)
}

fn wait_value(s: &Server, what: &str, args: &[&str], path: &str, want: &str) {
    wait_for(what, Duration::from_secs(30), || {
        (jsonpath(s, args, path) == want).then_some(())
    });
}

const STATIC: &str = "apiVersion: v1
kind: PersistentVolume
metadata: {name: small}
spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], storageClassName: manual, hostPath: {path: /tmp/krab-small}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: large}
spec: {capacity: {storage: 5Gi}, accessModes: [ReadWriteOnce], storageClassName: manual, persistentVolumeReclaimPolicy: Retain, hostPath: {path: /tmp/krab-large}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: reserved}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  persistentVolumeReclaimPolicy: Delete
  claimRef: {namespace: default, name: later}
  hostPath: {path: /tmp/krab-reserved}
";

fn claim(name: &str, size: &str, class: Option<&str>) -> String {
    let class = class
        .map(|c| format!("  storageClassName: \"{c}\"\n"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n{class}  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n")
}

#[test]
fn claims_bind_to_volumes_and_volumes_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pv.yaml", STATIC)]);
    // The smallest volume that fits: 2Gi needs `large`, 500Mi takes `small`.
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "big.yaml", &claim("big", "2Gi", Some("manual"))),
    ]);
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "tiny.yaml",
            &claim("tiny", "500Mi", Some("manual")),
        ),
    ]);
    wait_value(
        &s,
        "big bound",
        &["get", "pvc", "big"],
        "{.status.phase}",
        "Bound",
    );
    wait_value(
        &s,
        "tiny bound",
        &["get", "pvc", "tiny"],
        "{.status.phase}",
        "Bound",
    );
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "big"], "{.spec.volumeName}"),
        "large"
    );
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "tiny"], "{.spec.volumeName}"),
        "small"
    );
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "big"], "{.status.capacity.storage}"),
        "5Gi"
    );
    assert_eq!(
        jsonpath(&s, &["get", "pv", "large"], "{.status.phase}"),
        "Bound"
    );
    // A volume reserved for `later` waits for it, whoever else asks.
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "other.yaml",
            &claim("other", "1Gi", Some("manual")),
        ),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "other"], "{.status.phase}"),
        "Pending"
    );
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "later.yaml",
            &claim("later", "1Gi", Some("manual")),
        ),
    ]);
    wait_value(
        &s,
        "later bound",
        &["get", "pvc", "later"],
        "{.spec.volumeName}",
        "reserved",
    );
    // A claim with no class gets the default (local-path, waiting for its first pod).
    s.kube_ok(&[
        "apply",
        "-f",
        &write(dir.path(), "plain.yaml", &claim("plain", "1Gi", None)),
    ]);
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "plain"], "{.spec.storageClassName}"),
        "local-path"
    );
    let events = wait_for("WaitForFirstConsumer", Duration::from_secs(30), || {
        let e = s.kube_ok(&[
            "get",
            "events",
            "--field-selector=involvedObject.name=plain",
            "-o",
            "jsonpath={.items[*].reason}",
        ]);
        e.contains("WaitForFirstConsumer").then_some(e)
    });
    assert!(events.contains("WaitForFirstConsumer"));
    // Its first pod: the scheduler picks the node, the provisioner makes a volume pinned
    // there, the binder binds it, and the pod is bound.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: user}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: v, persistentVolumeClaim: {claimName: plain}}]\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "user.yaml", pod)]);
    wait_value(
        &s,
        "the pod bound",
        &["get", "pod", "user"],
        "{.spec.nodeName}",
        "n1",
    );
    let pv = jsonpath(&s, &["get", "pvc", "plain"], "{.spec.volumeName}");
    assert!(pv.starts_with("pvc-"), "{pv}");
    assert_eq!(
        jsonpath(
            &s,
            &["get", "pv", &pv],
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
        ),
        "n1"
    );
    assert_eq!(
        jsonpath(
            &s,
            &["get", "pvc", "plain"],
            "{.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        ),
        "n1"
    );
    // Claims deleted: Retain keeps the volume Released, a manual Delete volume fails (no
    // plugin can delete it), a provisioned one is deleted.
    s.kube_ok(&["delete", "pod", "user", "--grace-period=0", "--force"]);
    s.kube_ok(&["delete", "pvc", "big", "later", "plain"]);
    wait_value(
        &s,
        "large released",
        &["get", "pv", "large"],
        "{.status.phase}",
        "Released",
    );
    wait_value(
        &s,
        "reserved failed",
        &["get", "pv", "reserved"],
        "{.status.phase}",
        "Failed",
    );
    wait_for(
        "the provisioned volume deleted",
        Duration::from_secs(30),
        || {
            let out = s.kubectl(&["get", "pv", &pv]);
            (!out.status.success()).then_some(())
        },
    );
}

#[test]
fn a_pod_keeps_its_data_in_a_local_path_claim() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let s = Server::start_with_agent(&data, &[]);
    let manifest = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: writer}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'echo kept > /data/file && sleep 3600']\n    volumeMounts: [{{name: v, mountPath: /data}}]\n  volumes: [{{name: v, persistentVolumeClaim: {{claimName: keep}}}}]\n",
        claim("keep", "64Mi", None)
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "w.yaml", &manifest)]);
    wait_for("the writer running", Duration::from_secs(120), || {
        (jsonpath(&s, &["get", "pod", "writer"], "{.status.phase}") == "Running").then_some(())
    });
    let pv = jsonpath(&s, &["get", "pvc", "keep"], "{.spec.volumeName}");
    let path = jsonpath(&s, &["get", "pv", &pv], "{.spec.hostPath.path}");
    assert!(
        path.starts_with(&data.join("storage").display().to_string()),
        "{path}"
    );
    let file = std::path::Path::new(&path).join("file");
    let content = wait_for("the file written", Duration::from_secs(30), || {
        std::fs::read_to_string(&file).ok()
    });
    assert_eq!(content, "kept\n");
    s.kube_ok(&["delete", "pod", "writer", "--wait=true", "--timeout=60s"]);
    s.kube_ok(&["delete", "pvc", "keep"]);
    wait_for("the directory removed", Duration::from_secs(60), || {
        (!std::path::Path::new(&path).exists()).then_some(())
    });
}

const USER: &str = "apiVersion: v1
kind: Pod
metadata: {name: user}
spec:
  containers: [{name: c, image: busybox, volumeMounts: [{name: d, mountPath: /data}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: kept}}]
";

fn exists(s: &Server, kind: &str, name: &str) -> bool {
    s.kubectl(&["get", kind, name, "-o", "name"])
        .status
        .success()
}

#[test]
fn claims_in_use_and_bound_volumes_wait_for_their_users_before_going() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "pv.yaml", STATIC)]);
    s.kube_ok(&[
        "apply",
        "-f",
        &write(
            dir.path(),
            "kept.yaml",
            &claim("kept", "1Gi", Some("manual")),
        ),
    ]);
    wait_value(
        &s,
        "kept bound",
        &["get", "pvc", "kept"],
        "{.status.phase}",
        "Bound",
    );
    // Both carry kube's protection finalizers from admission.
    assert_eq!(
        jsonpath(&s, &["get", "pvc", "kept"], "{.metadata.finalizers}"),
        r#"["kubernetes.io/pvc-protection"]"#
    );
    assert_eq!(
        jsonpath(&s, &["get", "pv", "small"], "{.metadata.finalizers}"),
        r#"["kubernetes.io/pv-protection"]"#
    );

    // A pod uses the claim: deleting the claim leaves it Terminating.
    s.kube_ok(&["apply", "-f", &write(dir.path(), "user.yaml", USER)]);
    wait_value(
        &s,
        "the user bound",
        &["get", "pod", "user"],
        "{.spec.nodeName}",
        "n1",
    );
    s.kube_ok(&["delete", "pvc", "kept", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(exists(&s, "pvc", "kept"), "a claim in use must not go");
    assert!(!jsonpath(&s, &["get", "pvc", "kept"], "{.metadata.deletionTimestamp}").is_empty());
    // The bound volume cannot go either while bound.
    s.kube_ok(&["delete", "pv", "small", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(exists(&s, "pv", "small"), "a bound volume must not go");

    // The pod goes: the claim goes, the volume is released and then goes too.
    s.kube_ok(&["delete", "pod", "user", "--grace-period=0", "--force"]);
    wait_for("the claim gone", Duration::from_secs(30), || {
        (!exists(&s, "pvc", "kept")).then_some(())
    });
    wait_for("the volume gone", Duration::from_secs(30), || {
        (!exists(&s, "pv", "small")).then_some(())
    });
}
