//! Writing images into containerd through its API (content store, then image records), in
//! the CRI's `k8s.io` namespace, under a lease so that nothing half-written is collected.
use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1 as ctd;
use containerd_client::tonic::{self, Request};
use containerd_client::types::Descriptor as CtdDescriptor;

use super::archive::{self, Archive, Blob, Source};

/// containerd's namespace for everything the CRI plugin manages.
pub const NAMESPACE: &str = "k8s.io";
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Archive(#[from] archive::Error),
    #[error("containerd: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("containerd: {0}")]
    Connect(String),
}

fn req<T>(body: T, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(body);
    let md = r.metadata_mut();
    md.insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    if let Some(lease) = lease.and_then(|l| l.parse().ok()) {
        md.insert("containerd-lease", lease);
    }
    r
}

/// One import session: the client and a lease.
pub struct Importer {
    client: containerd_client::Client,
    lease: String,
}

impl Importer {
    pub async fn connect(socket: &Path) -> Result<Importer, Error> {
        let client = containerd_client::Client::from_path(socket)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let lease = format!("krab-import-{}", rand::random::<u64>());
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            time::OffsetDateTime::now_utc()
                .saturating_add(time::Duration::hours(1))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )]);
        client
            .leases()
            .create(req(
                ctd::CreateRequest {
                    id: lease.clone(),
                    labels,
                },
                None,
            ))
            .await?;
        Ok(Importer { client, lease })
    }

    pub async fn close(self) {
        let _ = self
            .client
            .leases()
            .delete(req(
                ctd::DeleteRequest {
                    id: self.lease.clone(),
                    sync: false,
                },
                None,
            ))
            .await;
    }

    async fn exists(&self, digest: &str) -> bool {
        self.client
            .content()
            .info(req(
                ctd::InfoRequest {
                    digest: digest.to_string(),
                },
                Some(&self.lease),
            ))
            .await
            .is_ok()
    }

    /// Writes one blob (in 1 MiB messages, committed with its expected digest and labels).
    async fn write(&self, blob: &Blob, bytes: Vec<u8>) -> Result<(), Error> {
        let total = bytes.len() as i64;
        let reference = format!("krab-{}", blob.digest);
        let mut messages = Vec::new();
        let mut offset = 0usize;
        while offset < bytes.len() {
            let end = (offset + CHUNK).min(bytes.len());
            messages.push(ctd::WriteContentRequest {
                action: ctd::WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                offset: offset as i64,
                data: bytes[offset..end].to_vec(),
                ..Default::default()
            });
            offset = end;
        }
        messages.push(ctd::WriteContentRequest {
            action: ctd::WriteAction::Commit as i32,
            r#ref: reference.clone(),
            total,
            expected: blob.digest.clone(),
            offset: total,
            labels: blob.labels.clone().into_iter().collect(),
            ..Default::default()
        });
        let stream = futures::stream::iter(messages);
        let mut responses = self
            .client
            .content()
            .write(req(stream, Some(&self.lease)))
            .await?
            .into_inner();
        while let Some(r) = responses.message().await? {
            let _ = r;
        }
        Ok(())
    }

    /// Imports an archive read from `path` (or built in memory, `path` None); returns the
    /// image names created or updated.
    pub async fn import(
        &self,
        archive: &Archive,
        path: Option<&Path>,
    ) -> Result<Vec<String>, Error> {
        let mut missing = Vec::new();
        for blob in &archive.blobs {
            if !self.exists(&blob.digest).await {
                missing.push(blob);
            }
        }
        // Layers stored in the archive come first (second pass over the file), then the
        // documents that refer to them.
        let members: HashMap<String, &Blob> = missing
            .iter()
            .filter_map(|b| match &b.source {
                Source::Member(m) => Some((m.clone(), *b)),
                Source::Bytes(_) => None,
            })
            .collect();
        if let (false, Some(path)) = (members.is_empty(), path) {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(1);
            let wanted: Vec<String> = members.keys().cloned().collect();
            let owned = path.to_path_buf();
            let reader = tokio::task::spawn_blocking(move || {
                archive::walk(&owned, |name, _size, r| {
                    if wanted.iter().any(|w| w == name) {
                        let mut buf = Vec::new();
                        r.read_to_end(&mut buf)
                            .map_err(|source| archive::Error::Io {
                                path: format!("{}:{name}", owned.display()),
                                source,
                            })?;
                        let _ = tx.blocking_send((name.to_string(), buf));
                    }
                    Ok(())
                })
            });
            while let Some((name, bytes)) = rx.recv().await {
                if let Some(blob) = members.get(&name) {
                    self.write(blob, bytes).await?;
                }
            }
            reader
                .await
                .map_err(|e| Error::Connect(format!("archive reader: {e}")))??;
        }
        for blob in &missing {
            if let Source::Bytes(bytes) = &blob.source {
                self.write(blob, bytes.clone()).await?;
            }
        }
        let mut names = Vec::new();
        for (name, desc) in &archive.images {
            let image = ctd::Image {
                name: name.clone(),
                labels: HashMap::from([(
                    "io.cri-containerd.image".to_string(),
                    "managed".to_string(),
                )]),
                target: Some(CtdDescriptor {
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.clone(),
                    size: desc.size,
                    annotations: Default::default(),
                }),
                ..Default::default()
            };
            let mut images = self.client.images();
            let current = images
                .get(req(ctd::GetImageRequest { name: name.clone() }, None))
                .await
                .ok()
                .and_then(|r| r.into_inner().image);
            match current {
                Some(cur) if cur.target.as_ref().map(|t| &t.digest) == Some(&desc.digest) => {}
                Some(_) => {
                    images
                        .update(req(
                            ctd::UpdateImageRequest {
                                image: Some(image),
                                ..Default::default()
                            },
                            Some(&self.lease),
                        ))
                        .await?;
                }
                None => {
                    images
                        .create(req(
                            ctd::CreateImageRequest {
                                image: Some(image),
                                ..Default::default()
                            },
                            Some(&self.lease),
                        ))
                        .await?;
                }
            }
            names.push(name.clone());
        }
        Ok(names)
    }
}
