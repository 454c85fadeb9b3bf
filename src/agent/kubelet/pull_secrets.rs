//! Registry credentials for a pull, from the pod's imagePullSecrets (and its service
//! account's): `kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg` secrets whose
//! registry matches the image's.
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::Api;

use crate::agent::cri::Auth;
use crate::agent::images::archive::normalize_reference;

/// The registry host of an image reference (`docker.io` for Docker Hub names).
pub fn registry_of(image: &str) -> String {
    let full = normalize_reference(image);
    full.split('/').next().unwrap_or("docker.io").to_string()
}

fn matches(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    host == registry
        || (registry == "docker.io"
            && (host == "index.docker.io" || host == "registry-1.docker.io"))
}

fn parse(secret: &Secret, registry: &str) -> Vec<Auth> {
    let data = secret.data.clone().unwrap_or_default();
    let doc = data
        .get(".dockerconfigjson")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
        .and_then(|v| v.get("auths").cloned())
        .or_else(|| {
            data.get(".dockercfg")
                .and_then(|b| serde_json::from_slice(&b.0).ok())
        });
    let Some(serde_json::Value::Object(auths)) = doc else {
        return Vec::new();
    };
    auths
        .iter()
        .filter(|(k, _)| matches(k, registry))
        .map(|(k, v)| {
            let s = |f: &str| {
                v.get(f)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            Auth {
                username: s("username"),
                password: s("password"),
                auth: s("auth"),
                server: k.clone(),
            }
        })
        .collect()
}

/// Credentials to try, in order; a missing secret is skipped (kube pulls anonymously then).
pub async fn auths(client: &kube::Client, pod: &Pod, image: &str) -> Vec<Auth> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.clone().unwrap_or_default();
    let mut names: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    if let Ok(Some(sa)) = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(&sa)
        .await
    {
        names.extend(
            sa.image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone()),
        );
    }
    let registry = registry_of(image);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for n in names {
        if let Ok(Some(s)) = secrets.get_opt(&n).await {
            out.extend(parse(&s, &registry));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_keys_match_docker_io_images() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("ghcr.io/a/b:1"), "ghcr.io");
        assert!(matches("https://index.docker.io/v1/", "docker.io"));
        assert!(!matches("ghcr.io", "docker.io"));
    }
}
