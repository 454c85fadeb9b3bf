//! The pause image, built by krab itself: one static executable (`pause_elf`) in one layer,
//! so every pod sandbox starts without any registry.
use std::collections::BTreeMap;

use serde_json::json;

use super::archive::{
    sha256_digest, Archive, Blob, Descriptor, Source, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use super::pause_elf;

/// The sandbox image reference containerd is configured with.
pub fn reference() -> String {
    format!("krab.local/pause:{}", env!("CARGO_PKG_VERSION"))
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("krab has no pause executable for {0}")]
    Arch(&'static str),
    #[error("building the pause image: {0}")]
    Build(String),
}

/// The layer: `/pause`, mode 0755, owned by root, with a fixed mtime so the image (and its
/// digest) is the same on every start.
fn layer(binary: &[u8]) -> Result<Vec<u8>, Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, "pause", binary)
        .map_err(|e| Error::Build(e.to_string()))?;
    builder
        .into_inner()
        .map_err(|e| Error::Build(e.to_string()))
}

/// The image's blobs and its one name.
pub fn archive() -> Result<Archive, Error> {
    let binary =
        pause_elf::for_arch(std::env::consts::ARCH).ok_or(Error::Arch(std::env::consts::ARCH))?;
    let layer = layer(binary)?;
    let layer_digest = sha256_digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .map_err(|e| Error::Build(e.to_string()))?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer.len()}],
    }))
    .map_err(|e| Error::Build(e.to_string()))?;
    let manifest_digest = sha256_digest(&manifest);
    let desc = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: manifest_digest.clone(),
        size: manifest.len() as i64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let labels = BTreeMap::from([
        (
            "containerd.io/gc.ref.content.config".to_string(),
            config_digest.clone(),
        ),
        (
            "containerd.io/gc.ref.content.l.0".to_string(),
            layer_digest.clone(),
        ),
    ]);
    Ok(Archive {
        blobs: vec![
            Blob {
                digest: layer_digest,
                labels: BTreeMap::new(),
                source: Source::Bytes(layer),
            },
            Blob {
                digest: config_digest,
                labels: BTreeMap::new(),
                source: Source::Bytes(config),
            },
            Blob {
                digest: manifest_digest,
                labels,
                source: Source::Bytes(manifest),
            },
        ],
        images: vec![(reference(), desc)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_image_is_the_same_on_every_build() {
        let a = archive().unwrap();
        let b = archive().unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.blobs.len(), 3);
        assert!(a.images[0].0.starts_with("krab.local/pause:"));
    }
}
