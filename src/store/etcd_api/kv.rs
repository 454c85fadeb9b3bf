//! etcd's KV service over the store.
use etcd_client::proto::*;
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::store::Store;

pub struct KvService {
    pub store: Store,
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let r = range_in(req.into_inner())?;
        let resp = self.store.range(r).await.map_err(status)?;
        Ok(Response::new(range_out(resp, self.store.header())))
    }

    type RangeStreamStream =
        futures::stream::BoxStream<'static, Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _req: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented(
            "etcdserver: RangeStream is not supported; use Range with limit",
        ))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let resp = self
            .store
            .put(put_in(req.into_inner()))
            .await
            .map_err(status)?;
        Ok(Response::new(put_out(resp, self.store.header())))
    }

    async fn delete_range(
        &self,
        req: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let resp = self
            .store
            .delete(delete_in(req.into_inner()))
            .await
            .map_err(status)?;
        Ok(Response::new(delete_out(resp, self.store.header())))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let t = txn_in(req.into_inner())?;
        let resp = self.store.txn(t).await.map_err(status)?;
        Ok(Response::new(txn_out(resp, self.store.header())))
    }

    async fn compact(
        &self,
        req: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let revision = req.into_inner().revision;
        self.store.compact(revision).await.map_err(status)?;
        Ok(Response::new(PbCompactionResponse {
            header: header(self.store.header()),
        }))
    }
}
