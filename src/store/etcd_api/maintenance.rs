//! etcd's Maintenance and Cluster services: status, snapshots, hashes and membership.
use etcd_client::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::store::types::RangeRequest;
use crate::store::Store;

/// The etcd API version krab's store speaks; etcdctl prints it in `endpoint status`.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub store: Store,
}

/// Streams what is written to it as snapshot chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Result<PbSnapshotResponse, Status>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 32 << 10;

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let blob = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(PbSnapshotResponse {
                header: None,
                remaining_bytes: 0,
                blob,
                version: String::new(),
            }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        _req: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        // krab raises no alarms: a full disk fails writes directly instead of arming NOSPACE.
        Ok(Response::new(PbAlarmResponse {
            header: header(self.store.header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let s = self.store.status();
        Ok(Response::new(PbStatusResponse {
            header: header(self.store.header()),
            version: ETCD_API_VERSION.into(),
            db_size: s.db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: s.db_size,
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _req: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: krab's store reclaims space by itself; defragment is not needed",
        ))
    }

    async fn hash(&self, _req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(Status::unimplemented("etcdserver: use HashKV"))
    }

    /// A CRC-32 over every live key, value and mod revision at a revision: equal on members
    /// that agree (not comparable with etcd's, which hashes its bbolt pages).
    async fn hash_kv(
        &self,
        req: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        };
        let r = self.store.range(all).await.map_err(status)?;
        let mut h = crc32fast::Hasher::new();
        for kv in &r.kvs {
            h.update(&kv.key);
            h.update(&kv.value);
            h.update(&kv.mod_revision.to_be_bytes());
        }
        let s = self.store.status();
        Ok(Response::new(PbHashKvResponse {
            header: header(self.store.header()),
            hash: h.finalize(),
            compact_revision: s.compact_revision,
            hash_revision: if revision > 0 { revision } else { r.revision },
        }))
    }

    type SnapshotStream = ReceiverStream<Result<PbSnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _req: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::new(),
            };
            let result = store
                .write_snapshot(&mut w)
                .and_then(|_| std::io::Write::flush(&mut w).map_err(crate::store::Error::from));
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        _req: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: move-leader is not supported by krab",
        ))
    }

    async fn downgrade(
        &self,
        _req: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: downgrade is not supported by krab",
        ))
    }
}

pub struct ClusterService {
    pub store: Store,
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        _req: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(Status::failed_precondition(
            "etcdserver: members join by starting `krab server --server <url> --token <token>`",
        ))
    }

    async fn member_remove(
        &self,
        req: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        let members = self
            .store
            .remove_member(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: header(self.store.header()),
            members: members.into_iter().map(member_out).collect(),
        }))
    }

    async fn member_update(
        &self,
        _req: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: member update is not supported by krab",
        ))
    }

    async fn member_list(
        &self,
        _req: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        Ok(Response::new(PbMemberListResponse {
            header: header(self.store.header()),
            members: self.store.members().into_iter().map(member_out).collect(),
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: krab has no learners to promote",
        ))
    }
}
