//! etcd's Lease service.
use etcd_client::proto::*;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::*;
use crate::store::{Error, Store};

pub struct LeaseService {
    pub store: Store,
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = req.into_inner();
        let (id, ttl) = self.store.lease_grant(r.id, r.ttl).await.map_err(status)?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: header(self.store.header()),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        self.store
            .lease_revoke(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: header(self.store.header()),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = requests.next().await {
                // An unknown or expired lease answers with TTL 0, as etcd does.
                let ttl = match store.lease_keep_alive(r.id).await {
                    Ok(ttl) => ttl,
                    Err(Error::LeaseNotFound) => 0,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let resp = PbLeaseKeepAliveResponse {
                    header: header(store.header()),
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let info = self
            .store
            .lease_time_to_live(r.id, r.keys)
            .await
            .map_err(status)?;
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: header(self.store.header()),
            id: info.id,
            ttl: info.ttl,
            granted_ttl: info.granted_ttl,
            keys: info.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        Ok(Response::new(PbLeaseLeasesResponse {
            header: header(self.store.header()),
            leases: self
                .store
                .leases()
                .into_iter()
                .map(|id| PbLeaseStatus { id })
                .collect(),
        }))
    }
}
