//! The `Datastore` interface: what the API server (and anything else above the store) uses,
//! served by the embedded store or, with `--datastore-endpoint`, by an external etcd.
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::external::ExternalEtcd;
use super::types::*;
use super::watch::{WatchMessage, WatchSpec};
use super::{Error, Result, Store};

#[derive(Clone)]
pub enum Datastore {
    Embedded(Store),
    External(Box<ExternalEtcd>),
}

impl Datastore {
    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        match self {
            Datastore::Embedded(s) => s.range(r).await,
            Datastore::External(e) => e.range(r).await,
        }
    }

    pub async fn txn(&self, t: TxnRequest) -> Result<TxnResponse> {
        match self {
            Datastore::Embedded(s) => s.txn(t).await,
            Datastore::External(e) => e.txn(t).await,
        }
    }

    pub async fn put(&self, p: PutRequest) -> Result<PutResponse> {
        let r = self.txn(TxnRequest::single(TxnOp::Put(p))).await?;
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            _ => Err(Error::Io("put produced no response".into())),
        }
    }

    pub async fn delete(&self, d: DeleteRequest) -> Result<DeleteResponse> {
        let r = self.txn(TxnRequest::single(TxnOp::Delete(d))).await?;
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            _ => Err(Error::Io("delete produced no response".into())),
        }
    }

    pub async fn compact(&self, revision: Revision) -> Result<Revision> {
        match self {
            Datastore::Embedded(s) => s.compact(revision).await,
            Datastore::External(e) => e.compact(revision).await,
        }
    }

    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        match self {
            Datastore::Embedded(s) => s.lease_grant(id, ttl).await,
            Datastore::External(e) => e.lease_grant(id, ttl).await,
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<Revision> {
        match self {
            Datastore::Embedded(s) => s.lease_revoke(id).await,
            Datastore::External(e) => e.lease_revoke(id).await,
        }
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        match self {
            Datastore::Embedded(s) => s.lease_keep_alive(id).await,
            Datastore::External(e) => e.lease_keep_alive(id).await,
        }
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseInfo> {
        match self {
            Datastore::Embedded(s) => s.lease_time_to_live(id, keys).await,
            Datastore::External(e) => e.lease_time_to_live(id, keys).await,
        }
    }

    pub fn watch(
        &self,
        spec: WatchSpec,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<WatchMessage> {
        match self {
            Datastore::Embedded(s) => s.watch(spec, cancel),
            Datastore::External(e) => e.watch(spec, cancel),
        }
    }
}
