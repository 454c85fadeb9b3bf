//! The default ClusterRoles and ClusterRoleBindings every cluster starts with, after kube's
//! bootstrap policy: cluster-admin for system:masters, admin/edit/view for users to bind,
//! basic-user, discovery and public-info for everyone authenticated, service-account issuer
//! discovery, and the identities of krab's own loops and nodes. Created when missing;
//! brought back in line when annotated `rbac.authorization.kubernetes.io/autoupdate: "true"`.
//!
//! The controllers' own roles are in `controller_roles`.
//!
//! Where krab differs: `system:node` is bound to the group system:nodes for what the Node
//! authorizer leaves to RBAC.
use serde_json::{json, Value};

use crate::apiserver::registry::Registry;
use crate::apiserver::resources;
use crate::apiserver::status::ApiError;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

pub(super) fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn all(a: &[&'static str], b: &[&'static str]) -> Vec<&'static str> {
    a.iter().chain(b).copied().collect()
}

/// Namespaced things users work with: what view reads (no secrets) and edit also writes.
fn workload_rules(verbs: &[&str], secrets: bool) -> Vec<Value> {
    let mut core = vec![
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "services",
        "services/status",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces/status",
        "bindings",
    ];
    if secrets {
        core.push("secrets");
    }
    vec![
        rule(&[""], &core, verbs),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            verbs,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            verbs,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            verbs,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            verbs,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            verbs,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], verbs),
        rule(&["events.k8s.io"], &["events"], verbs),
        rule(&["coordination.k8s.io"], &["leases"], verbs),
    ]
}

pub(super) fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    })
}

pub(super) fn binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// An aggregated ClusterRole (`admin`, `edit`, `view`): its selector, its initial rules, and
/// the role it aggregates into in turn.
fn aggregated(name: &str, rules: Vec<Value>, into: Option<&str>) -> Value {
    let mut role = cluster_role(name, rules);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("{AGGREGATE_TO}{name}"): "true"}}
    ]});
    if let Some(into) = into {
        role["metadata"]["labels"][format!("{AGGREGATE_TO}{into}")] = json!("true");
    }
    role
}

/// `system:aggregate-to-<name>`: the rules `name` adds to what it aggregates.
fn aggregate_to(name: &str, rules: Vec<Value>) -> Value {
    let mut role = cluster_role(&format!("system:aggregate-to-{name}"), rules);
    role["metadata"]["labels"][format!("{AGGREGATE_TO}{name}")] = json!("true");
    role
}

/// What view grants (no secrets, nothing written).
fn view_rules_only() -> Vec<Value> {
    let mut view = workload_rules(READ, false);
    view.push(rule(&[""], &["namespaces"], READ));
    view
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let mut roles = builtin_roles();
    roles.extend(super::controller_roles::cluster_roles());
    roles
}

fn builtin_roles() -> Vec<Value> {
    let edit_verbs = all(READ, WRITE);
    let view = view_rules_only();
    let mut edit = workload_rules(&edit_verbs, true);
    edit.push(rule(
        &[""],
        &[
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "pods/proxy",
            "services/proxy",
            "pods/eviction",
        ],
        &["create", "get"],
    ));
    edit.push(rule(&[""], &["serviceaccounts/token"], &["create"]));
    edit.push(rule(&[""], &["namespaces"], READ));
    let mut admin = edit.clone();
    admin.push(rule(
        &["rbac.authorization.k8s.io"],
        &["rolebindings", "roles"],
        &edit_verbs,
    ));
    admin.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    // kube's shape: admin, edit and view are aggregated from the roles labelled
    // `aggregate-to-<role>` (the clusterrole-aggregation controller keeps their rules); edit
    // aggregates into admin and view into edit. Created with the rules aggregation would
    // give them, so they work before the controller first runs.
    let mut admin_only = admin.clone();
    admin_only.retain(|r| !edit.contains(r));
    let mut edit_only = edit.clone();
    edit_only.retain(|r| !view.contains(r));
    vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", admin, None),
        aggregated("edit", edit, Some("admin")),
        aggregated("view", view.clone(), Some("edit")),
        aggregate_to("admin", admin_only),
        aggregate_to("edit", edit_only),
        aggregate_to("view", view),
        // What metrics-server adds on kube: every viewer may read resource metrics.
        {
            let mut r = cluster_role(
                "system:aggregated-metrics-reader",
                vec![rule(&["metrics.k8s.io"], &["pods", "nodes"], READ)],
            );
            for to in ["admin", "edit", "view"] {
                r["metadata"]["labels"][format!("{AGGREGATE_TO}{to}")] = json!("true");
            }
            r
        },
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                    READ,
                ),
                rule(&[""], &["pods"], &["delete"]),
                // Claims marked for the chosen node, volumes reserved for claims.
                rule(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                    &["patch", "update"],
                ),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["storage.k8s.io"], &["*"], READ),
                rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "list", "watch", "update", "patch"],
                ),
            ],
        ),
        cluster_role(
            "system:node",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &all(READ, &["create", "update", "patch", "delete"]),
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &all(READ, &["create", "delete"])),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                // Secrets, configmaps, claims and service accounts (and their tokens) are the
                // Node authorizer's to grant, per pod bound to the node.
                rule(
                    &[""],
                    &["services", "endpoints", "namespaces", "persistentvolumes"],
                    READ,
                ),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &all(READ, &["create", "update", "patch", "delete"]),
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["networking.k8s.io"], &["networkpolicies"], READ),
                rule(
                    &["storage.k8s.io"],
                    &["csidrivers", "csinodes", "volumeattachments"],
                    READ,
                ),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let authenticated = json!([group("system:authenticated")]);
    let mut bindings = vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            json!([group("system:masters")]),
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            authenticated.clone(),
        ),
        binding("system:discovery", "system:discovery", authenticated),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([
                group("system:authenticated"),
                group("system:unauthenticated")
            ]),
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            json!([group("system:serviceaccounts")]),
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            json!([user("system:kube-scheduler")]),
        ),
        binding("system:node", "system:node", json!([group("system:nodes")])),
    ];
    bindings.extend(super::controller_roles::cluster_role_bindings());
    bindings
}

/// Creates the default policy objects that are missing and updates auto-updated ones that
/// drifted.
pub async fn ensure(registry: &Registry) -> Result<(), ApiError> {
    let group = "rbac.authorization.k8s.io";
    let sets = [
        ("clusterroles", cluster_roles(), "rules"),
        ("clusterrolebindings", cluster_role_bindings(), "subjects"),
    ];
    for (plural, objects, field) in sets {
        let Some(r) = resources::find(group, "v1", plural) else {
            continue;
        };
        for obj in objects {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match registry.get(r, None, &name).await {
                Ok(mut current) => {
                    let auto = current
                        .pointer(
                            "/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate",
                        )
                        .and_then(Value::as_str)
                        == Some("true");
                    // An aggregated role's rules are the aggregation controller's.
                    let field = if obj.get("aggregationRule").is_some() {
                        "aggregationRule"
                    } else {
                        field
                    };
                    if auto && current.get(field) != obj.get(field) {
                        current[field] = obj[field].clone();
                        registry
                            .update(
                                r,
                                None,
                                &name,
                                current,
                                crate::apiserver::strategy::Write::Main,
                            )
                            .await?;
                    }
                }
                Err(e) if e.code.as_u16() == 404 => match registry.create(r, None, obj).await {
                    Ok(_)
                    | Err(ApiError {
                        reason: "AlreadyExists",
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
