//! The cluster's certificates, where k3s keeps them (`<data-dir>/server/tls`): a server CA
//! that signs the API server's serving certificate, a client CA that signs client
//! certificates (the admin's among them), shared by every server of the cluster.
use std::path::{Path, PathBuf};

use super::service_account::ServiceAccountKey;
use super::{Ca, Leaf, Result, Usage};

/// The first address of the default service CIDR (10.43.0.0/16): the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: &str = "10.43.0.1";

pub struct ClusterTls {
    pub dir: PathBuf,
    pub server_ca_pem: String,
    pub client_ca_pem: String,
    pub serving: Leaf,
    pub admin: Leaf,
    /// The API server's client certificate toward kubelets (logs, exec, port-forward).
    pub kubelet_client: Leaf,
    /// Signs and verifies service-account tokens.
    pub service_account: ServiceAccountKey,
}

/// Ensures the cluster CAs, the API server's serving certificate for `sans` plus the names
/// in-cluster clients use, the admin client certificate (O=system:masters) and the
/// service-account signing key.
pub fn ensure_cluster(data_dir: &Path, sans: &[String]) -> Result<ClusterTls> {
    let dir = data_dir.join("server").join("tls");
    let server_ca = Ca::ensure(&dir, "server-ca", "krab-server-ca")?;
    let client_ca = Ca::ensure(&dir, "client-ca", "krab-client-ca")?;
    let mut names: Vec<String> = sans.to_vec();
    for extra in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        KUBERNETES_SERVICE_IP,
    ] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_string());
        }
    }
    let serving = server_ca.ensure_leaf(
        &dir,
        "serving-kube-apiserver",
        "kube-apiserver",
        None,
        &names,
        Usage::Server,
    )?;
    let admin = client_ca.ensure_leaf(
        &dir,
        "client-admin",
        "system:admin",
        Some("system:masters"),
        &[],
        Usage::Client,
    )?;
    let kubelet_client = client_ca.ensure_leaf(
        &dir,
        "client-kube-apiserver",
        "system:kube-apiserver",
        Some("system:masters"),
        &[],
        Usage::Client,
    )?;
    let service_account = ServiceAccountKey::ensure(&dir)?;
    Ok(ClusterTls {
        dir,
        server_ca_pem: server_ca.cert_pem,
        client_ca_pem: client_ca.cert_pem,
        serving,
        admin,
        kubelet_client,
        service_account,
    })
}

/// The kubelet's serving certificate for a node of this server (`<data-dir>/agent/
/// serving-kubelet.{crt,key}`, where k3s keeps it), signed by the server CA that the API
/// server checks kubelets against.
pub fn ensure_kubelet_serving(data_dir: &Path, node: &str, sans: &[String]) -> Result<Leaf> {
    let server_ca = Ca::ensure(
        &data_dir.join("server").join("tls"),
        "server-ca",
        "krab-server-ca",
    )?;
    let mut names = sans.to_vec();
    for extra in [node, "localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_string());
        }
    }
    let dir = data_dir.join("agent");
    std::fs::create_dir_all(&dir).map_err(super::io(&dir))?;
    server_ca.ensure_leaf(&dir, "serving-kubelet", node, None, &names, Usage::Server)
}

/// What a joining agent receives: its client certificate (`system:node:<name>`, group
/// `system:nodes`), the kubelet's serving certificate, and the CAs to trust (PEM).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    pub client_certificate: String,
    pub client_key: String,
    pub serving_certificate: String,
    pub serving_key: String,
    pub server_ca: String,
    pub client_ca: String,
}

/// Issues the credentials of node `node` reachable at `addresses`, from the cluster CAs in
/// `<data-dir>/server/tls`, valid for `validity` (kube's `cluster-signing-duration`).
pub fn issue_node_credentials(
    data_dir: &Path,
    node: &str,
    addresses: &[String],
    validity: std::time::Duration,
) -> Result<NodeCredentials> {
    let dir = data_dir.join("server").join("tls");
    let server_ca = Ca::ensure(&dir, "server-ca", "krab-server-ca")?;
    let client_ca = Ca::ensure(&dir, "client-ca", "krab-client-ca")?;
    let (client_certificate, client_key) = client_ca.issue_valid_for(
        &format!("system:node:{node}"),
        Some("system:nodes"),
        &[],
        Usage::Client,
        Some(validity),
    )?;
    let mut sans = addresses.to_vec();
    for extra in [node, "localhost", "127.0.0.1"] {
        if !sans.iter().any(|n| n == extra) {
            sans.push(extra.to_string());
        }
    }
    let (serving_certificate, serving_key) =
        server_ca.issue_valid_for(node, None, &sans, Usage::Server, Some(validity))?;
    Ok(NodeCredentials {
        client_certificate,
        client_key,
        serving_certificate,
        serving_key,
        server_ca: server_ca.cert_pem,
        client_ca: client_ca.cert_pem,
    })
}
