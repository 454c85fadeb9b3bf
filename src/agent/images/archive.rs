//! Reading image archives: OCI image layouts and `docker save` archives, as `.tar` or
//! `.tar.gz`, into the blobs and image records containerd needs. Two passes over the file:
//! the first keeps the small JSON documents, the second yields the layers one at a time, so
//! memory never holds more than one layer.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Files larger than this are layers, read only in the second pass.
const SMALL: u64 = 4 << 20;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

/// A content descriptor, as OCI and containerd spell it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One blob to store, with the garbage-collection labels that keep its children alive.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub labels: BTreeMap<String, String>,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A member of the archive, read in the second pass.
    Member(String),
}

/// What an archive holds: its blobs (children before parents) and its named images.
#[derive(Debug, Default)]
pub struct Archive {
    pub blobs: Vec<Blob>,
    pub images: Vec<(String, Descriptor)>,
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The archive's entries, decompressing `.gz` transparently.
fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut magic = [0u8; 2];
    let gz = {
        use std::io::BufRead;
        let buf = reader.fill_buf().map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        if buf.len() >= 2 {
            magic.copy_from_slice(&buf[..2]);
        }
        magic == [0x1f, 0x8b]
    };
    let inner: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    Ok(tar::Archive::new(inner))
}

fn clean(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

/// Walks every regular file of the archive, calling `f(name, size, reader)`.
pub fn walk(
    path: &Path,
    mut f: impl FnMut(&str, u64, &mut dyn Read) -> Result<(), Error>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut archive = open(path)?;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = clean(&entry.path().map_err(io)?.to_string_lossy());
        let size = entry.size();
        f(&name, size, &mut entry)?;
    }
    Ok(())
}

/// First pass: the small members, and the names and sizes of the large ones.
/// Small members by name, and the sizes of the large ones.
type Survey = (HashMap<String, Vec<u8>>, HashMap<String, u64>);

fn survey(path: &Path) -> Result<Survey, Error> {
    let mut small = HashMap::new();
    let mut large = HashMap::new();
    walk(path, |name, size, r| {
        if size <= SMALL {
            let mut buf = Vec::with_capacity(size as usize);
            r.read_to_end(&mut buf).map_err(|source| Error::Io {
                path: format!("{}:{name}", path.display()),
                source,
            })?;
            small.insert(name.to_string(), buf);
        } else {
            large.insert(name.to_string(), size);
        }
        Ok(())
    })?;
    Ok((small, large))
}

fn invalid(path: &Path, what: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.display().to_string(),
        what: what.into(),
    }
}

/// Whether a platform runs here (linux on this machine's architecture).
pub fn platform_matches(p: &Platform) -> bool {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    p.os == "linux" && p.architecture == arch
}

/// The full image reference for a short name (`busybox` → `docker.io/library/busybox:latest`),
/// as containerd and the kubelet normalise it.
pub fn normalize_reference(name: &str) -> String {
    let (repo, tag_or_digest) = match name.rsplit_once('@') {
        Some((r, d)) => (r.to_string(), format!("@{d}")),
        None => match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), format!(":{t}")),
            _ => (name.to_string(), ":latest".to_string()),
        },
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_domain =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        repo
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{full}{tag_or_digest}")
}

struct Reader<'a> {
    path: &'a Path,
    small: &'a HashMap<String, Vec<u8>>,
    large: &'a HashMap<String, u64>,
    blobs: Vec<Blob>,
    seen: std::collections::HashSet<String>,
}

impl Reader<'_> {
    fn member(digest: &str) -> String {
        format!("blobs/{}", digest.replacen(':', "/", 1))
    }

    fn json(&self, digest: &str) -> Result<Value, Error> {
        let name = Self::member(digest);
        let bytes = self
            .small
            .get(&name)
            .ok_or_else(|| invalid(self.path, format!("{name} is missing")))?;
        if sha256_digest(bytes) != digest {
            return Err(invalid(
                self.path,
                format!("{name} does not match its digest"),
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| invalid(self.path, format!("{name}: {e}")))
    }

    fn push(&mut self, digest: &str, labels: BTreeMap<String, String>) -> Result<(), Error> {
        if !self.seen.insert(digest.to_string()) {
            return Ok(());
        }
        let name = Self::member(digest);
        let source = if let Some(bytes) = self.small.get(&name) {
            Source::Bytes(bytes.clone())
        } else if self.large.contains_key(&name) {
            Source::Member(name)
        } else {
            return Err(invalid(self.path, format!("{name} is missing")));
        };
        self.blobs.push(Blob {
            digest: digest.to_string(),
            labels,
            source,
        });
        Ok(())
    }

    /// Adds a manifest or index and everything it needs (for an index, only the manifests
    /// for this platform).
    fn add(&mut self, desc: &Descriptor) -> Result<(), Error> {
        let doc = self.json(&desc.digest)?;
        let mut labels = BTreeMap::new();
        if desc.media_type == OCI_INDEX || desc.media_type == DOCKER_LIST {
            let children: Vec<Descriptor> =
                serde_json::from_value(doc.get("manifests").cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(self.path, format!("index {}: {e}", desc.digest)))?;
            for (i, child) in children.iter().enumerate() {
                let wanted = child.platform.as_ref().is_none_or(platform_matches);
                if wanted && self.small.contains_key(&Self::member(&child.digest)) {
                    self.add(child)?;
                    labels.insert(
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        child.digest.clone(),
                    );
                }
            }
        } else {
            let config: Descriptor = serde_json::from_value(
                doc.get("config").cloned().unwrap_or(Value::Null),
            )
            .map_err(|e| invalid(self.path, format!("manifest {}: config: {e}", desc.digest)))?;
            let layers: Vec<Descriptor> = serde_json::from_value(
                doc.get("layers").cloned().unwrap_or(Value::Null),
            )
            .map_err(|e| invalid(self.path, format!("manifest {}: layers: {e}", desc.digest)))?;
            self.push(&config.digest, BTreeMap::new())?;
            labels.insert(
                "containerd.io/gc.ref.content.config".into(),
                config.digest.clone(),
            );
            for (i, layer) in layers.iter().enumerate() {
                self.push(&layer.digest, BTreeMap::new())?;
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    layer.digest.clone(),
                );
            }
        }
        self.push(&desc.digest, labels)
    }
}

/// Reads an archive's structure (first pass).
pub fn read(path: &Path) -> Result<Archive, Error> {
    let (small, large) = survey(path)?;
    if let Some(index) = small.get("index.json") {
        read_oci(path, index, &small, &large)
    } else if let Some(manifest) = small.get("manifest.json") {
        read_docker(path, manifest, &small, &large)
    } else {
        Err(invalid(
            path,
            "neither an OCI image layout (index.json) nor a docker archive (manifest.json)",
        ))
    }
}

fn read_oci(
    path: &Path,
    index: &[u8],
    small: &HashMap<String, Vec<u8>>,
    large: &HashMap<String, u64>,
) -> Result<Archive, Error> {
    let index: Value =
        serde_json::from_slice(index).map_err(|e| invalid(path, format!("index.json: {e}")))?;
    let entries: Vec<Descriptor> =
        serde_json::from_value(index.get("manifests").cloned().unwrap_or(Value::Null))
            .map_err(|e| invalid(path, format!("index.json: manifests: {e}")))?;
    let mut reader = Reader {
        path,
        small,
        large,
        blobs: Vec::new(),
        seen: Default::default(),
    };
    let mut images = Vec::new();
    for desc in &entries {
        if desc.platform.as_ref().is_some_and(|p| !platform_matches(p)) {
            continue;
        }
        reader.add(desc)?;
        let name = desc
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains('/') || n.contains(':'))
            .map(|n| normalize_reference(n));
        match name {
            Some(n) => images.push((n, desc.clone())),
            None => {
                tracing::warn!(archive = %path.display(), digest = %desc.digest, "image without a name (io.containerd.image.name) skipped")
            }
        }
    }
    Ok(Archive {
        blobs: reader.blobs,
        images,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// `docker save` archives carry no manifests: write an OCI manifest for each entry, over its
/// uncompressed layers (their digests are computed in a pass of their own).
fn read_docker(
    path: &Path,
    manifest: &[u8],
    small: &HashMap<String, Vec<u8>>,
    large: &HashMap<String, u64>,
) -> Result<Archive, Error> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest)
        .map_err(|e| invalid(path, format!("manifest.json: {e}")))?;
    let wanted: std::collections::HashSet<&str> = entries
        .iter()
        .flat_map(|e| e.layers.iter().map(String::as_str))
        .collect();
    let mut digests: HashMap<String, (String, i64)> = HashMap::new();
    walk(path, |name, size, r| {
        if wanted.contains(name) {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = r.read(&mut buf).map_err(|source| Error::Io {
                    path: format!("{}:{name}", path.display()),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            digests.insert(name.to_string(), (format!("sha256:{hex}"), size as i64));
        }
        Ok(())
    })?;
    let mut archive = Archive::default();
    let mut seen = std::collections::HashSet::new();
    for entry in &entries {
        let config = small
            .get(&entry.config)
            .ok_or_else(|| invalid(path, format!("{} is missing", entry.config)))?;
        let config_digest = sha256_digest(config);
        let mut labels = BTreeMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            config_digest.clone(),
        );
        if seen.insert(config_digest.clone()) {
            archive.blobs.push(Blob {
                digest: config_digest.clone(),
                labels: BTreeMap::new(),
                source: Source::Bytes(config.clone()),
            });
        }
        let mut layers = Vec::new();
        for (i, layer) in entry.layers.iter().enumerate() {
            let (digest, size) = digests
                .get(layer)
                .cloned()
                .ok_or_else(|| invalid(path, format!("{layer} is missing")))?;
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                digest.clone(),
            );
            if seen.insert(digest.clone()) {
                let source = if small.contains_key(layer) || !large.contains_key(layer) {
                    Source::Bytes(small.get(layer).cloned().unwrap_or_default())
                } else {
                    Source::Member(layer.clone())
                };
                archive.blobs.push(Blob {
                    digest: digest.clone(),
                    labels: BTreeMap::new(),
                    source,
                });
            }
            layers.push(json!({"mediaType": OCI_LAYER, "digest": digest, "size": size}));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .map_err(|e| invalid(path, e.to_string()))?;
        let digest = sha256_digest(&manifest);
        let desc = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: manifest.len() as i64,
            platform: None,
            annotations: BTreeMap::new(),
        };
        archive.blobs.push(Blob {
            digest,
            labels,
            source: Source::Bytes(manifest),
        });
        for tag in entry.repo_tags.iter().flatten() {
            archive
                .images
                .push((normalize_reference(tag), desc.clone()));
        }
    }
    Ok(archive)
}

/// The `*.tar` and `*.tar.gz` files of a directory, sorted.
pub fn archives_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            p.is_file() && (n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz"))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_does() {
        assert_eq!(
            normalize_reference("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize_reference("me/app"), "docker.io/me/app:latest");
        assert_eq!(
            normalize_reference("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_reference("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(
            normalize_reference("quay.io/a/b@sha256:abc"),
            "quay.io/a/b@sha256:abc"
        );
    }

    #[test]
    fn a_file_that_is_no_image_archive_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("x.tar") && err.contains("index.json"), "{err}");
    }
}
