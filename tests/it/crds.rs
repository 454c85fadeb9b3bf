//! CustomResourceDefinitions with kubectl v1.32: a CRD becomes Established and its kind is
//! served (discovery, short names, printer columns, `kubectl explain`), objects are pruned,
//! defaulted and validated against the schema with kube's messages, status and scale
//! subresources behave as kube's, several versions share one stored object, owner
//! references to custom objects are collected, and deleting the CRD (or a namespace) takes
//! its objects with it.
use std::time::Duration;

use serde_json::Value;

use crate::support::{wait_for, write, Server};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
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
            required: [image]
            properties:
              cronSpec:
                type: string
                description: When the job runs, in cron's syntax.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
              replicas:
                type: integer
                minimum: 1
                maximum: 10
                default: 1
              mode:
                type: string
                enum: [Allow, Forbid]
          status:
            type: object
            properties:
              replicas: {type: integer}
              labelSelector: {type: string}
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.labelSelector
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
"#;

const CRONTAB: &str = r#"apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: nightly
spec:
  cronSpec: "0 3 * * *"
  image: backup:1
"#;

fn json(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.kube_ok(args)).unwrap()
}

fn install_crd(s: &Server, dir: &std::path::Path) {
    let f = write(dir, "crd.yaml", CRD);
    assert!(s.kube_ok(&["apply", "-f", &f]).contains(
        "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created"
    ));
    s.kube_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ]);
}

#[test]
fn custom_resources_are_served_validated_and_printed_like_built_in_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    install_crd(&s, dir.path());
    let crd = json(
        &s,
        &["get", "crd", "crontabs.stable.example.com", "-o", "json"],
    );
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "CronTab");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert_eq!(crd["spec"]["names"]["listKind"], "CronTabList");

    // Applied twice without flags: created, then unchanged (kubectl validates server-side,
    // which it learns from the served OpenAPI v3 document).
    let f = write(dir.path(), "ct.yaml", CRONTAB);
    assert!(s
        .kube_ok(&["apply", "-f", &f])
        .contains("crontab.stable.example.com/nightly created"));
    assert!(s.kube_ok(&["apply", "-f", &f]).contains("unchanged"));
    let ct = json(&s, &["get", "ct", "nightly", "-o", "json"]);
    assert_eq!(ct["spec"]["replicas"], 1, "the schema's default: {ct}");
    assert_eq!(ct["metadata"]["generation"], 1);
    let table = s.kube_ok(&["get", "crontabs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["nightly", "0", "3", "*", "*", "*", "1"]);
    let resources = s.kube_ok(&["api-resources", "--api-group=stable.example.com"]);
    assert!(
        resources.lines().any(|l| l.split_whitespace().eq([
            "crontabs",
            "ct",
            "stable.example.com/v1",
            "true",
            "CronTab"
        ])),
        "{resources}"
    );
    let explained = s.kube_ok(&["explain", "crontab.spec.cronSpec"]);
    assert!(
        explained.contains("When the job runs, in cron's syntax."),
        "{explained}"
    );

    // Unknown fields are refused (kubectl asks for Strict), wrong values named per field.
    let bogus = write(
        dir.path(),
        "bogus.yaml",
        &CRONTAB
            .replace("nightly", "bogus")
            .replace("image: backup:1", "image: b\n  colour: red"),
    );
    let err = s.kube_err(&["apply", "-f", &bogus]);
    assert!(
        err.contains("CronTab in version \"v1\" cannot be handled as a CronTab: strict decoding error: unknown field \"spec.colour\""),
        "{err}"
    );
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: bad}\nspec: {cronSpec: soon, replicas: 11, mode: Maybe}\n",
    );
    let err = s.kube_err(&["apply", "-f", &bad]);
    for expected in [
        "The CronTab \"bad\" is invalid",
        "spec.image: Required value",
        "spec.cronSpec: Invalid value: \"soon\": spec.cronSpec in body should match",
        "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
        "spec.mode: Unsupported value: \"Maybe\": supported values: \"Allow\", \"Forbid\"",
    ] {
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
    assert!(s.kube_err(&["get", "ct", "bad"]).contains("NotFound"));

    // Patches: merge patch yes, strategic merge patch no (no merge keys), as on kube.
    s.kube_ok(&[
        "patch",
        "ct",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"backup:2"}}"#,
    ]);
    let err = s.kube_err(&["patch", "ct", "nightly", "-p", r#"{"spec":{"image":"x"}}"#]);
    assert!(
        err.contains("application/strategic-merge-patch+json is not supported"),
        "{err}"
    );
    let ct = json(&s, &["get", "ct", "nightly", "-o", "json"]);
    assert_eq!(ct["spec"]["image"], "backup:2");
    assert_eq!(ct["metadata"]["generation"], 2);

    // Status moves only through its subresource and leaves the generation alone; the scale
    // subresource reads and writes the CRD's paths.
    s.kube_ok(&[
        "patch",
        "ct",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    assert!(json(&s, &["get", "ct", "nightly", "-o", "json"])["status"].is_null());
    s.kube_ok(&[
        "patch",
        "ct",
        "nightly",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"labelSelector":"app=backup"}}"#,
    ]);
    s.kube_ok(&["scale", "ct", "nightly", "--replicas=4"]);
    let scale = json(
        &s,
        &[
            "get",
            "--raw",
            "/apis/stable.example.com/v1/namespaces/default/crontabs/nightly/scale",
        ],
    );
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["replicas"], 1);
    assert_eq!(scale["status"]["selector"], "app=backup");
    let ct = json(&s, &["get", "ct", "nightly", "-o", "json"]);
    assert_eq!(ct["metadata"]["generation"], 3);
    assert_eq!(ct["status"]["replicas"], 1);

    // An invalid CRD is refused with the field named.
    let bad_crd = write(
        dir.path(),
        "badcrd.yaml",
        &CRD.replace("stable.example.com", "stable"),
    );
    let err = s.kube_err(&["apply", "-f", &bad_crd]);
    assert!(
        err.contains(
            "spec.group: Invalid value: \"stable\": should be a domain with at least one dot"
        ),
        "{err}"
    );
}

#[test]
fn custom_objects_live_and_die_with_their_crd_namespace_and_owners() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    install_crd(&s, dir.path());
    let f = write(dir.path(), "ct.yaml", CRONTAB);
    s.kube_ok(&["apply", "-f", &f]);

    // A ConfigMap owned by the custom object goes when it goes.
    let uid = s.kube_ok(&["get", "ct", "nightly", "-o", "jsonpath={.metadata.uid}"]);
    let owned = write(
        dir.path(),
        "owned.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences:\n  - {{apiVersion: stable.example.com/v1, kind: CronTab, name: nightly, uid: {uid}}}\n"
        ),
    );
    s.kube_ok(&["apply", "-f", &owned]);
    s.kube_ok(&["delete", "ct", "nightly"]);
    wait_for(
        "the owned ConfigMap to be collected",
        Duration::from_secs(60),
        || {
            let out = s.kubectl(&["get", "cm", "owned"]);
            String::from_utf8_lossy(&out.stderr)
                .contains("NotFound")
                .then_some(())
        },
    );

    // Watches see custom objects come and go.
    let mut watch = std::process::Command::new("kubectl")
        .args(["--kubeconfig"])
        .arg(s.kubeconfig())
        .args([
            "get",
            "ct",
            "-A",
            "-w",
            "--output-watch-events",
            "--request-timeout=30s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.kube_ok(&["create", "namespace", "team"]);
    s.kube_ok(&["-n", "team", "apply", "-f", &f]);
    s.kube_ok(&["apply", "-f", &f]);

    // Deleting the namespace deletes its custom objects.
    s.kube_ok(&["delete", "namespace", "team", "--timeout=30s"]);
    assert!(s.kube_ok(&["get", "ct", "-A"]).contains("default"));

    // Several versions, one stored object: written at v1beta1, read at either, kept at v1.
    let gizmos = write(
        dir.path(),
        "gizmos.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gizmos.example.org}\nspec:\n  group: example.org\n  scope: Cluster\n  names: {plural: gizmos, kind: Gizmo}\n  versions:\n  - {name: v1beta1, served: true, storage: false, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n",
    );
    s.kube_ok(&["apply", "-f", &gizmos]);
    s.kube_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=20s",
        "crd/gizmos.example.org",
    ]);
    let g = write(
        dir.path(),
        "g.yaml",
        "apiVersion: example.org/v1beta1\nkind: Gizmo\nmetadata: {name: g1}\nspec: {parts: [1, 2]}\n",
    );
    s.kube_ok(&["apply", "-f", &g]);
    let old = json(
        &s,
        &["get", "gizmos.v1beta1.example.org", "g1", "-o", "json"],
    );
    assert_eq!(old["apiVersion"], "example.org/v1beta1");
    let new = json(&s, &["get", "gizmos", "g1", "-o", "json"]);
    assert_eq!(new["apiVersion"], "example.org/v1", "v1 is preferred");
    assert_eq!(new["spec"]["parts"], serde_json::json!([1, 2]));
    let stored = s.ok(&[
        "get",
        "/registry/example.org/gizmos/g1",
        "--print-value-only",
    ]);
    assert!(
        stored.contains("\"apiVersion\":\"example.org/v1\""),
        "{stored}"
    );

    // Deleting a CRD deletes its objects, then the CRD, then the kind is no longer served.
    s.kube_ok(&[
        "delete",
        "crd",
        "crontabs.stable.example.com",
        "--timeout=30s",
    ]);
    assert!(s
        .kube_err(&["get", "crd", "crontabs.stable.example.com"])
        .contains("NotFound"));
    let err = s.kube_err(&["get", "--raw", "/apis/stable.example.com/v1/crontabs"]);
    assert!(err.contains("NotFound"), "{err}");
    let left = s.ok(&[
        "get",
        "/registry/stable.example.com/",
        "--prefix",
        "--keys-only",
    ]);
    assert!(left.trim().is_empty(), "objects left behind: {left}");

    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "ADDED      default     nightly",
        "ADDED      team        nightly",
        "DELETED    team        nightly",
        "DELETED    default     nightly",
    ] {
        let cols: Vec<&str> = expected.split_whitespace().collect();
        assert!(
            events
                .lines()
                .any(|l| l.split_whitespace().take(3).eq(cols.iter().copied())),
            "{expected:?} not in the watch:\n{events}"
        );
    }
}

#[test]
fn defaults_added_to_a_crd_apply_to_objects_already_stored_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let without = CRD.replace("                default: 1\n", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "crd.yaml", &without)]);
    s.kube_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout=20s",
    ]);
    let ct = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: old\nspec:\n  image: busybox\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "ct.yaml", ct)]);
    assert_eq!(
        s.kube_ok(&["get", "ct", "old", "-o", "jsonpath={.spec.replicas}"]),
        ""
    );
    // The schema gains a default: the stored object reads with it (get, list, watch).
    s.kube_ok(&["apply", "-f", &write(dir.path(), "crd2.yaml", CRD)]);
    wait_for("the default on read", Duration::from_secs(20), || {
        (s.kube_ok(&["get", "ct", "old", "-o", "jsonpath={.spec.replicas}"]) == "1").then_some(())
    });
    assert_eq!(
        s.kube_ok(&["get", "ct", "-o", "jsonpath={.items[0].spec.replicas}"]),
        "1"
    );
}

#[test]
fn selectable_fields_make_custom_resources_filterable_by_field_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let with_fields = CRD.replace(
        "    subresources:\n",
        "    selectableFields:\n    - jsonPath: .spec.mode\n    - jsonPath: .spec.replicas\n    subresources:\n",
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "crd.yaml", &with_fields)]);
    s.kube_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout=20s",
    ]);
    let ct = |name: &str, mode: &str, replicas: u32| {
        format!("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: {name}\nspec:\n  image: busybox\n  mode: {mode}\n  replicas: {replicas}\n---\n")
    };
    let objects = format!("{}{}", ct("a", "Allow", 1), ct("f", "Forbid", 2));
    s.kube_ok(&["apply", "-f", &write(dir.path(), "cts.yaml", &objects)]);
    let names = |selector: &str| {
        s.kube_ok(&[
            "get",
            "ct",
            "--field-selector",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
    };
    wait_for(
        "the selectable fields served",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&[
                "get",
                "ct",
                "--field-selector",
                "spec.mode=Forbid",
                "-o",
                "name",
            ]);
            out.status.success().then_some(())
        },
    );
    assert_eq!(names("spec.mode=Forbid"), "f");
    assert_eq!(names("spec.mode!=Forbid"), "a");
    assert_eq!(names("spec.replicas=1"), "a");
    let err = s.kube_err(&["get", "ct", "--field-selector", "spec.image=busybox"]);
    assert!(
        err.contains("field label not supported: spec.image"),
        "{err}"
    );
    // A selectable field must name a scalar of the schema.
    let bad = CRD
        .replace("crontabs.stable.example.com", "others.stable.example.com")
        .replace("plural: crontabs", "plural: others")
        .replace("singular: crontab", "singular: other")
        .replace("kind: CronTab", "kind: Other")
        .replace("shortNames: [ct]", "shortNames: [ot]")
        .replace(
            "    subresources:\n",
            "    selectableFields:\n    - jsonPath: .spec.missing\n    subresources:\n",
        );
    let err = s.kube_err(&["apply", "-f", &write(dir.path(), "bad.yaml", &bad)]);
    assert!(
        err.contains("spec.versions[0].selectableFields[0].jsonPath: Invalid value: \".spec.missing\": is an invalid path: does not refer to a valid field"),
        "{err}"
    );
}
