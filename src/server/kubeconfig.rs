//! The admin kubeconfig (`--write-kubeconfig`, default /etc/krab/krab.yaml, mode 0600 unless
//! `--write-kubeconfig-mode`), so `KUBECONFIG=/etc/krab/krab.yaml kubectl get ns` works at once.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use base64::Engine;

use crate::tls::cluster::ClusterTls;

pub fn write(path: &Path, mode: &str, server_url: &str, certs: &ClusterTls) -> anyhow::Result<()> {
    let mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .with_context(|| format!("--write-kubeconfig-mode {mode:?} is not an octal file mode"))?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let doc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server_url}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&certs.server_ca_pem),
        b64(&certs.admin.cert_pem),
        b64(&certs.admin.key_pem),
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc).with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to set the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))?;
    tracing::info!(path = %path.display(), "wrote the admin kubeconfig");
    Ok(())
}
