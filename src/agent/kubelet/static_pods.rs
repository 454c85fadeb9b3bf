//! Static pods: every Pod manifest (YAML or JSON, one or more documents) in
//! `<data-dir>/agent/pod-manifests/` becomes a mirror pod in the API, `<name>-<node>` bound
//! to this node with kube's mirror annotations (config.source, config.hash, config.mirror)
//! and the Node as owner, which the pod workers then run like any other. A changed file
//! replaces its mirror pod; a removed file deletes it; a deleted mirror pod comes back.
//!
//! Unlike the kubelet, krab runs static pods through their mirror pods, so they need the API
//! server to start (the kubelet runs them from the files alone).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Kubelet;

pub const SOURCE: &str = "kubernetes.io/config.source";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const MIRROR: &str = "kubernetes.io/config.mirror";

/// How often the directory is read again.
const RESCAN: Duration = Duration::from_secs(5);

/// One manifest's pod as its mirror should be.
#[derive(Debug)]
struct Wanted {
    file: PathBuf,
    pod: Pod,
    hash: String,
}

/// The pods the manifests in `dir` describe; files that cannot be read are reported and
/// skipped (their mirror pods are left as they are).
fn read_manifests(dir: &Path, node: &str) -> (Vec<Wanted>, Vec<PathBuf>) {
    let mut wanted = Vec::new();
    let mut unreadable = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read a static pod manifest");
                unreadable.push(file);
                continue;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "a static pod manifest is not valid YAML");
                    unreadable.push(file.clone());
                    break;
                }
            };
            let pod: Pod = match serde_yaml::from_value(value) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "a static pod manifest is not a Pod");
                    unreadable.push(file.clone());
                    break;
                }
            };
            let Some(name) = pod.metadata.name.clone() else {
                tracing::warn!(file = %file.display(), "a static pod without metadata.name is skipped");
                continue;
            };
            let mut mirror = pod.clone();
            let canonical = serde_json::to_vec(&pod).unwrap_or_default();
            let hash = format!("{:x}", Sha256::digest(&canonical))[..32].to_string();
            mirror.metadata.name = Some(format!("{name}-{node}"));
            mirror.metadata.namespace = Some(
                pod.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            );
            let annotations = mirror
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            annotations.insert(SOURCE.into(), "file".into());
            annotations.insert(HASH.into(), hash.clone());
            annotations.insert(MIRROR.into(), hash.clone());
            if let Some(spec) = mirror.spec.as_mut() {
                spec.node_name = Some(node.to_string());
            }
            wanted.push(Wanted {
                file: file.clone(),
                pod: mirror,
                hash,
            });
        }
    }
    (wanted, unreadable)
}

/// Keeps the mirror pods in line with the manifests until `shutdown`.
pub async fn run(k: Arc<Kubelet>, dir: PathBuf, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        if let Err(e) = sync(&k, &dir).await {
            tracing::debug!(dir = %dir.display(), error = %e, "static pods not synced yet");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

async fn sync(k: &Kubelet, dir: &Path) -> Result<(), kube::Error> {
    if !dir.exists() {
        return Ok(());
    }
    let (wanted, unreadable) = read_manifests(dir, &k.node_name);
    let node = Api::<Node>::all(k.client.clone()).get(&k.node_name).await?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: k.node_name.clone(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        ..Default::default()
    };
    let existing = Api::<Pod>::all(k.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", k.node_name)))
        .await?;
    let mirrors: Vec<&Pod> = existing
        .items
        .iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(MIRROR))
        })
        .collect();
    for w in &wanted {
        let ns = w.pod.metadata.namespace.clone().unwrap_or_default();
        let name = w.pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
        let current = mirrors.iter().find(|p| {
            p.metadata.name.as_deref() == Some(name.as_str())
                && p.metadata.namespace.as_deref() == Some(ns.as_str())
        });
        match current {
            Some(p)
                if p.metadata.annotations.as_ref().and_then(|a| a.get(HASH)) == Some(&w.hash) => {}
            Some(_) => {
                // Pod specs are immutable: a changed manifest replaces its mirror pod.
                tracing::info!(namespace = %ns, pod = %name, file = %w.file.display(), "static pod changed; replacing its mirror pod");
                api.delete(&name, &DeleteParams::default()).await?;
            }
            None => {
                let mut pod = w.pod.clone();
                pod.metadata.owner_references = Some(vec![owner.clone()]);
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, pod = %name, file = %w.file.display(), "mirror pod created")
                    }
                    // The old one is still terminating: next round.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, pod = %name, file = %w.file.display(), error = %e, "cannot create the mirror pod")
                    }
                }
            }
        }
    }
    // Mirror pods whose file is gone (an unreadable file keeps its pods).
    for p in mirrors {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let still_wanted = wanted.iter().any(|w| {
            w.pod.metadata.name.as_deref() == Some(name.as_str())
                && w.pod.metadata.namespace.as_deref() == Some(ns.as_str())
        });
        if still_wanted || !unreadable.is_empty() || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        tracing::info!(namespace = %ns, pod = %name, "static pod manifest removed; deleting its mirror pod");
        let _ = Api::<Pod>::namespaced(k.client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: c, image: busybox}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: data}\nspec:\n  containers:\n  - {name: c, image: busybox}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (wanted, unreadable) = read_manifests(dir.path(), "n1");
        assert_eq!(wanted.len(), 2);
        assert_eq!(wanted[0].pod.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(wanted[0].pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(wanted[1].pod.metadata.name.as_deref(), Some("db-n1"));
        assert_eq!(wanted[1].pod.metadata.namespace.as_deref(), Some("data"));
        let a = wanted[0].pod.metadata.annotations.clone().unwrap();
        assert_eq!(a[SOURCE], "file");
        assert_eq!(a[HASH], a[MIRROR]);
        assert_eq!(
            wanted[0].pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("n1")
        );
        assert_eq!(unreadable, vec![dir.path().join("broken.yaml")]);
    }
}
