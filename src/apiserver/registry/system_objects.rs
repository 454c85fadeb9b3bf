//! The objects every cluster has, created when missing on each start: the system
//! namespaces, the two system PriorityClasses, the local APIServices of the built-in group
//! versions, the `kubernetes` Service with its Endpoints
//! and EndpointSlice (this server's address), and the `kube-dns` Service. Another server of
//! the cluster may create them at the same time; that is no error.
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::Registry;
use crate::apiserver::resources::{self, Resource};
use crate::apiserver::status::ApiError;
use crate::apiserver::strategy::Write;

impl Registry {
    /// The two priority classes every cluster has.
    pub async fn ensure_system_priority_classes(&self) -> Result<(), ApiError> {
        let Some(r) = resources::find("scheduling.k8s.io", "v1", "priorityclasses") else {
            return Ok(());
        };
        for (name, value, description) in [
            ("system-node-critical", 2_000_001_000i64, "Used for system critical pods that must not be moved from their current node."),
            ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
        ] {
            let pc = json!({
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
                "description": description,
                "preemptionPolicy": "PreemptLowerPriority",
            });
            match self.create(r, None, pc).await {
                Ok(_) | Err(ApiError { reason: "AlreadyExists", .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An APIService per served built-in group version ("v1.", "v1.apps", ...), Local and
    /// Available, as kube-apiserver's autoregistration keeps them.
    pub async fn ensure_local_api_services(&self) -> Result<(), ApiError> {
        let Some(r) = resources::find("apiregistration.k8s.io", "v1", "apiservices") else {
            return Ok(());
        };
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for res in resources::RESOURCES.iter() {
            if !seen.contains(&(res.group, res.version)) {
                seen.push((res.group, res.version));
            }
        }
        for (group, version) in seen {
            let name = format!("{version}.{group}");
            let service = json!({
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": name, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
                "spec": {
                    "group": group,
                    "version": version,
                    "groupPriorityMinimum": group_priority(group),
                    "versionPriority": if version == "v1" { 15 } else { 30 },
                },
            });
            match self.create(r, None, service).await {
                Ok(mut created) => {
                    created["status"] = json!({"conditions": [{
                        "type": "Available",
                        "status": "True",
                        "lastTransitionTime": crate::apiserver::objects::now_rfc3339(),
                        "reason": "Local",
                        "message": "Local APIServices are always available",
                    }]});
                    self.update(r, None, &name, created, Write::Status).await?;
                }
                Err(ApiError {
                    reason: "AlreadyExists",
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The `kubernetes` Service's Endpoints and EndpointSlice: this API server's address, as
    /// kube-apiserver's endpoint reconciler keeps them.
    pub async fn ensure_kubernetes_endpoints(
        &self,
        ip: std::net::IpAddr,
        port: u16,
    ) -> Result<(), ApiError> {
        let address_type = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let wanted = [
            (
                ("", "v1", "endpoints"),
                json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                    "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
                }),
            ),
            (
                ("discovery.k8s.io", "v1", "endpointslices"),
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
                    "addressType": address_type,
                    "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                }),
            ),
        ];
        for ((group, version, plural), obj) in wanted {
            let Some(r) = resources::find(group, version, plural) else {
                continue;
            };
            match self.get(r, Some("default"), "kubernetes").await {
                Ok(current) => {
                    let same = ["subsets", "endpoints", "ports"]
                        .iter()
                        .all(|f| current.get(*f) == obj.get(*f));
                    if !same {
                        let mut updated = current.clone();
                        for f in ["subsets", "endpoints", "ports", "addressType"] {
                            if let Some(v) = obj.get(f) {
                                updated[f] = v.clone();
                            }
                        }
                        self.update(r, Some("default"), "kubernetes", updated, Write::Main)
                            .await?;
                    }
                }
                Err(e) if e.code == StatusCode::NOT_FOUND => {
                    match self.create(r, Some("default"), obj).await {
                        Ok(_)
                        | Err(ApiError {
                            reason: "AlreadyExists",
                            ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the namespaces that always exist, when missing.
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        let Some(r) = resources::find("", "v1", "namespaces") else {
            return Ok(());
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self.create(r, None, obj).await {
                Ok(_) => tracing::info!(namespace = ns, "created namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The `kubernetes` Service in `default`, on the first service IP, as kube-apiserver
    /// keeps it.
    pub async fn ensure_kubernetes_service(&self, port: u16) -> Result<(), ApiError> {
        let Some(r) = resources::find("", "v1", "services") else {
            return Ok(());
        };
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kubernetes",
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.services.first_ip().map(|ip| ip.to_string()),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None",
            },
        });
        self.ensure_system_service(r, "default", "kubernetes", svc)
            .await
    }

    /// The `kube-dns` Service in kube-system on the cluster DNS address (the agents answer
    /// it themselves; clients that look for the Service find it), as k3s has it.
    pub async fn ensure_kube_dns_service(&self) -> Result<(), ApiError> {
        let (Some(r), Some(ip)) = (
            resources::find("", "v1", "services"),
            self.services.cluster_dns,
        ) else {
            return Ok(());
        };
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        });
        self.ensure_system_service(r, "kube-system", "kube-dns", svc)
            .await
    }

    async fn ensure_system_service(
        &self,
        r: &'static Resource,
        ns: &str,
        name: &str,
        svc: Value,
    ) -> Result<(), ApiError> {
        match self.get(r, Some(ns), name).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
        match self.create(r, Some(ns), svc).await {
            Ok(_) => tracing::info!(namespace = ns, service = name, "created a system service"),
            // Another server of the cluster made it first.
            Err(e) if e.reason == "AlreadyExists" || e.reason == "Conflict" => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// kube-aggregator's groupPriorityMinimum of the built-in groups (higher comes first).
fn group_priority(group: &str) -> i64 {
    match group {
        "" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "admissionregistration.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "apiextensions.k8s.io" => 16400,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        _ => 1000,
    }
}
