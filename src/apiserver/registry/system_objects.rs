//! The objects every cluster has, created when missing on each start: the system
//! namespaces, the two system PriorityClasses, the `kubernetes` Service with its Endpoints
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
