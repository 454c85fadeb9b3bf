//! The roles of the controller manager's loops, after kube's bootstrap controller policy:
//! each loop acts as the service account `kube-system:<identity>` and holds the ClusterRole
//! `system:controller:<identity>`, bound to that account, granting what the loop reads and
//! writes and nothing more. `system:kube-controller-manager` itself keeps kube's narrow role
//! (its lease, Events, the token controller's secrets, and listing anything).
//!
//! Where krab differs: one loop may do the work of two of kube's controllers (endpoints and
//! endpoint slices; service accounts and the root CA ConfigMap), so its role covers both; and
//! loops use `patch` where kube's use `update`, so both verbs are granted.
use serde_json::{json, Value};

use super::bootstrap::{binding, cluster_role, rule};

const READ: &[&str] = &["get", "list", "watch"];
const MODIFY: &[&str] = &["get", "list", "watch", "update", "patch"];
const ALL: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const STATUS: &[&str] = &["update", "patch"];

/// The prefix of a controller's ClusterRole (kube's `saRolePrefix`).
pub const ROLE_PREFIX: &str = "system:controller:";

fn events() -> Value {
    rule(
        &["", "events.k8s.io"],
        &["events"],
        &["create", "update", "patch"],
    )
}

/// Each controller identity and what it may do; Events for every one.
fn controller_rules() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            // It must hold what it aggregates, or be allowed to escalate.
            "clusterrole-aggregation-controller",
            vec![rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
                &["escalate", "get", "list", "watch", "update", "patch"],
            )],
        ),
        (
            "deployment-controller",
            vec![
                rule(&["apps"], &["deployments"], MODIFY),
                rule(&["apps"], &["deployments/status"], STATUS),
                rule(&["apps"], &["deployments/finalizers"], &["update"]),
                rule(&["apps"], &["replicasets"], ALL),
                rule(&[""], &["pods"], MODIFY),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(&["apps"], &["replicasets"], MODIFY),
                rule(&["apps"], &["replicasets/status"], STATUS),
                rule(&["apps"], &["replicasets/finalizers"], &["update"]),
                rule(&[""], &["pods"], ALL),
            ],
        ),
        (
            "replication-controller",
            vec![
                rule(&[""], &["replicationcontrollers"], MODIFY),
                rule(&[""], &["replicationcontrollers/status"], STATUS),
                rule(&[""], &["replicationcontrollers/finalizers"], &["update"]),
                rule(&[""], &["pods"], ALL),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(&["apps"], &["daemonsets"], READ),
                rule(&["apps"], &["daemonsets/status"], STATUS),
                rule(&["apps"], &["daemonsets/finalizers"], &["update"]),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods"], ALL),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(&["apps"], &["controllerrevisions"], ALL),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(&["apps"], &["statefulsets"], READ),
                rule(&["apps"], &["statefulsets/status"], STATUS),
                rule(&["apps"], &["statefulsets/finalizers"], &["update"]),
                rule(&[""], &["pods", "persistentvolumeclaims"], ALL),
                rule(&[""], &["pods/finalizers"], &["update"]),
                rule(&["apps"], &["controllerrevisions"], ALL),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(&["batch"], &["jobs"], MODIFY),
                rule(&["batch"], &["jobs/status"], STATUS),
                rule(&["batch"], &["jobs/finalizers"], &["update"]),
                rule(&[""], &["pods"], ALL),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(&["batch"], &["cronjobs"], MODIFY),
                rule(&["batch"], &["cronjobs/status"], STATUS),
                rule(&["batch"], &["cronjobs/finalizers"], &["update"]),
                rule(&["batch"], &["jobs"], ALL),
                rule(&[""], &["pods"], &["list", "watch", "delete"]),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![rule(
                &["batch"],
                &["jobs"],
                &["get", "list", "watch", "delete"],
            )],
        ),
        (
            "generic-garbage-collector",
            vec![rule(
                &["*"],
                &["*"],
                &["get", "list", "watch", "patch", "update", "delete"],
            )],
        ),
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["get", "list", "watch", "delete"]),
                rule(&[""], &["namespaces/finalize", "namespaces/status"], STATUS),
                rule(
                    &["*"],
                    &["*"],
                    &["get", "list", "watch", "delete", "deletecollection"],
                ),
            ],
        ),
        (
            "service-account-controller",
            vec![
                rule(&[""], &["namespaces"], READ),
                rule(
                    &[""],
                    &["serviceaccounts"],
                    &["get", "list", "watch", "create"],
                ),
                // kube's root-ca-cert-publisher: the `kube-root-ca.crt` ConfigMaps.
                rule(
                    &[""],
                    &["configmaps"],
                    &["get", "list", "watch", "create", "update"],
                ),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["get", "list", "watch", "update", "patch", "delete"],
                ),
                rule(&[""], &["nodes/status", "pods/status"], STATUS),
                rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
                rule(&["coordination.k8s.io"], &["leases"], READ),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&[""], &["services", "pods", "nodes"], READ),
                rule(&[""], &["services/finalizers"], &["update"]),
                rule(&[""], &["endpoints"], ALL),
                rule(&[""], &["endpoints/restricted"], &["create"]),
                rule(&["discovery.k8s.io"], &["endpointslices"], ALL),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                rule(&[""], &["pods"], &["list", "watch", "delete"]),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods/status"], &["patch"]),
            ],
        ),
        (
            "service-lb-controller",
            vec![
                rule(&[""], &["services"], READ),
                rule(&[""], &["services/status"], STATUS),
                rule(&[""], &["nodes"], READ),
            ],
        ),
        (
            "persistent-volume-binder",
            vec![
                rule(
                    &[""],
                    &["persistentvolumes"],
                    &[
                        "get", "list", "watch", "update", "patch", "create", "delete",
                    ],
                ),
                rule(
                    &[""],
                    &["persistentvolumes/status", "persistentvolumeclaims/status"],
                    STATUS,
                ),
                rule(&[""], &["persistentvolumeclaims"], MODIFY),
                rule(&[""], &["pods", "nodes"], READ),
                rule(&["storage.k8s.io"], &["storageclasses"], READ),
            ],
        ),
        (
            // k3s runs this as the local-path-provisioner Deployment; krab in-process.
            "local-path-provisioner",
            vec![
                rule(
                    &[""],
                    &["persistentvolumes"],
                    &[
                        "get", "list", "watch", "create", "patch", "update", "delete",
                    ],
                ),
                rule(&[""], &["persistentvolumeclaims"], MODIFY),
                rule(&[""], &["nodes"], READ),
                rule(
                    &["storage.k8s.io"],
                    &["storageclasses"],
                    &["get", "list", "watch", "create"],
                ),
            ],
        ),
        (
            "pvc-protection-controller",
            vec![
                rule(&[""], &["persistentvolumeclaims"], MODIFY),
                rule(&[""], &["pods"], READ),
            ],
        ),
        (
            "pv-protection-controller",
            vec![rule(&[""], &["persistentvolumes"], MODIFY)],
        ),
        (
            "disruption-controller",
            vec![
                rule(
                    &["apps"],
                    &["deployments", "replicasets", "statefulsets"],
                    READ,
                ),
                rule(&[""], &["replicationcontrollers", "pods"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["policy"], &["poddisruptionbudgets/status"], STATUS),
                rule(&[""], &["pods/status"], STATUS),
                rule(&["*"], &["*/scale"], &["get"]),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                // Quota counts anything, so it may list and watch everything.
                rule(&["*"], &["*"], &["list", "watch"]),
                rule(&[""], &["resourcequotas"], &["get"]),
                rule(&[""], &["resourcequotas/status"], STATUS),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(&["autoscaling"], &["horizontalpodautoscalers"], READ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                    STATUS,
                ),
                rule(&["*"], &["*/scale"], &["get", "update", "patch"]),
                rule(&[""], &["pods"], &["list", "watch"]),
                rule(&["metrics.k8s.io"], &["pods"], &["list", "watch"]),
                rule(
                    &["custom.metrics.k8s.io", "external.metrics.k8s.io"],
                    &["*"],
                    READ,
                ),
            ],
        ),
    ]
}

/// `system:controller:<identity>` for every controller identity.
pub fn cluster_roles() -> Vec<Value> {
    let mut roles: Vec<Value> = controller_rules()
        .into_iter()
        .map(|(identity, mut rules)| {
            rules.push(events());
            cluster_role(&format!("{ROLE_PREFIX}{identity}"), rules)
        })
        .collect();
    roles.push(cluster_role(
        "system:kube-controller-manager",
        vec![
            events(),
            rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            json!({
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["kube-controller-manager"],
                "verbs": ["get", "update", "patch"],
            }),
            // The token controller, and the controllers' own service accounts.
            rule(&[""], &["secrets", "serviceaccounts"], &["create"]),
            rule(&[""], &["secrets"], &["delete"]),
            rule(
                &[""],
                &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                &["get"],
            ),
            rule(&[""], &["secrets", "serviceaccounts"], &["update"]),
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["create"],
            ),
            rule(&["*"], &["*"], &["list", "watch"]),
            rule(&[""], &["serviceaccounts/token"], &["create"]),
        ],
    ));
    roles
}

/// Each controller role bound to its service account in kube-system.
pub fn cluster_role_bindings() -> Vec<Value> {
    controller_rules()
        .into_iter()
        .map(|(identity, _)| {
            let role = format!("{ROLE_PREFIX}{identity}");
            binding(
                &role,
                &role,
                json!([{"kind": "ServiceAccount", "name": identity, "namespace": "kube-system"}]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::rbac::rules::{rule_allows, Attributes};

    fn allows(identity: &str, verb: &str, group: &str, resource: &str, sub: Option<&str>) -> bool {
        let role = cluster_roles()
            .into_iter()
            .find(|r| r["metadata"]["name"] == format!("{ROLE_PREFIX}{identity}"))
            .expect("role exists");
        let attrs = Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(str::to_string),
            namespace: Some("default".into()),
            name: Some("x".into()),
        };
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| rule_allows(r, &attrs))
    }

    #[test]
    fn each_controller_reaches_what_it_owns_and_no_more() {
        assert!(allows(
            "deployment-controller",
            "create",
            "apps",
            "replicasets",
            None
        ));
        assert!(allows(
            "deployment-controller",
            "patch",
            "apps",
            "deployments",
            Some("status")
        ));
        assert!(!allows("deployment-controller", "create", "", "pods", None));
        assert!(!allows("deployment-controller", "get", "", "secrets", None));
        assert!(allows("replicaset-controller", "create", "", "pods", None));
        assert!(!allows(
            "replicaset-controller",
            "delete",
            "apps",
            "replicasets",
            None
        ));
        assert!(allows(
            "horizontal-pod-autoscaler",
            "update",
            "apps",
            "deployments",
            Some("scale")
        ));
        assert!(!allows(
            "horizontal-pod-autoscaler",
            "update",
            "apps",
            "deployments",
            None
        ));
        assert!(allows(
            "resourcequota-controller",
            "list",
            "",
            "secrets",
            None
        ));
        assert!(!allows(
            "resourcequota-controller",
            "get",
            "",
            "secrets",
            None
        ));
        assert!(allows(
            "service-account-controller",
            "create",
            "",
            "events",
            None
        ));
    }

    #[test]
    fn every_role_is_bound_to_its_service_account() {
        let bindings = cluster_role_bindings();
        assert_eq!(bindings.len(), controller_rules().len());
        let b = bindings
            .iter()
            .find(|b| b["metadata"]["name"] == "system:controller:deployment-controller")
            .expect("the deployment controller's binding");
        assert_eq!(
            b["roleRef"]["name"],
            "system:controller:deployment-controller"
        );
        assert_eq!(b["subjects"][0]["name"], "deployment-controller");
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(b["subjects"][0]["namespace"], "kube-system");
    }
}
