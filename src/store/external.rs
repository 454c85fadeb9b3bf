//! An external etcd (`--datastore-endpoint`) behind the same operations as the embedded
//! store, through the `etcd-client` crate: for users who outgrow the embedded datastore.
use std::time::Duration;

use etcd_client::proto::*;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    GetOptions, Identity, PutOptions, SortOrder as EtcdOrder, SortTarget as EtcdTarget, TlsOptions,
    Txn, TxnOp as EtcdOp, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::types::*;
use super::watch::{WatchMessage, WatchSpec};
use super::{Error, Result};

/// Where and how to reach the external etcd.
#[derive(Clone, Debug, Default)]
pub struct ExternalConfig {
    pub endpoints: Vec<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct ExternalEtcd {
    client: Client,
}

fn ext(e: etcd_client::Error) -> Error {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            if m.contains("required revision has been compacted") {
                Error::Compacted {
                    compact_revision: 0,
                }
            } else if m.contains("required revision is a future revision") {
                Error::FutureRevision { current: 0 }
            } else if m.contains("requested lease not found") {
                Error::LeaseNotFound
            } else if m.contains("request is too large") {
                Error::RequestTooLarge {
                    size: 0,
                    limit: super::MAX_REQUEST_BYTES,
                }
            } else if m.contains("duplicate key") {
                Error::DuplicateKey
            } else if m.contains("too many operations") {
                Error::TooManyOps
            } else if m.contains("key is not provided") {
                Error::EmptyKey
            } else if m.contains("database space exceeded") {
                Error::NoSpace(m.to_string())
            } else {
                Error::External(m.to_string())
            }
        }
        other => Error::External(other.to_string()),
    }
}

fn kv_in(kv: PbKeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn rev_of(h: &Option<PbResponseHeader>) -> Revision {
    h.as_ref().map(|h| h.revision).unwrap_or(0)
}

fn get_options(r: &RangeRequest) -> GetOptions {
    let mut o = GetOptions::new();
    if !r.range_end.is_empty() {
        o = o.with_range(r.range_end.clone());
    }
    if r.limit > 0 {
        o = o.with_limit(r.limit);
    }
    if r.revision > 0 {
        o = o.with_revision(r.revision);
    }
    if r.sort_order != SortOrder::None || r.sort_target != SortTarget::Key {
        let target = match r.sort_target {
            SortTarget::Key => EtcdTarget::Key,
            SortTarget::Version => EtcdTarget::Version,
            SortTarget::Create => EtcdTarget::Create,
            SortTarget::Mod => EtcdTarget::Mod,
            SortTarget::Value => EtcdTarget::Value,
        };
        let order = match r.sort_order {
            SortOrder::None => EtcdOrder::None,
            SortOrder::Ascend => EtcdOrder::Ascend,
            SortOrder::Descend => EtcdOrder::Descend,
        };
        o = o.with_sort(target, order);
    }
    if r.serializable {
        o = o.with_serializable();
    }
    if r.keys_only {
        o = o.with_keys_only();
    }
    if r.count_only {
        o = o.with_count_only();
    }
    if r.min_mod_revision > 0 {
        o = o.with_min_mod_revision(r.min_mod_revision);
    }
    if r.max_mod_revision > 0 {
        o = o.with_max_mod_revision(r.max_mod_revision);
    }
    if r.min_create_revision > 0 {
        o = o.with_min_create_revision(r.min_create_revision);
    }
    if r.max_create_revision > 0 {
        o = o.with_max_create_revision(r.max_create_revision);
    }
    o
}

fn put_options(p: &PutRequest) -> PutOptions {
    let mut o = PutOptions::new();
    if p.lease != 0 {
        o = o.with_lease(p.lease);
    }
    if p.prev_kv {
        o = o.with_prev_key();
    }
    if p.ignore_value {
        o = o.with_ignore_value();
    }
    if p.ignore_lease {
        o = o.with_ignore_lease();
    }
    o
}

fn delete_options(d: &DeleteRequest) -> DeleteOptions {
    let mut o = DeleteOptions::new();
    if !d.range_end.is_empty() {
        o = o.with_range(d.range_end.clone());
    }
    if d.prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn compare_out(c: &Compare) -> EtcdCompare {
    let op = match c.result {
        CompareResult::Equal => CompareOp::Equal,
        CompareResult::Greater => CompareOp::Greater,
        CompareResult::Less => CompareOp::Less,
        CompareResult::NotEqual => CompareOp::NotEqual,
    };
    let key = c.key.clone();
    let cmp = match &c.target {
        CompareTarget::Version(v) => EtcdCompare::version(key, op, *v),
        CompareTarget::CreateRevision(v) => EtcdCompare::create_revision(key, op, *v),
        CompareTarget::ModRevision(v) => EtcdCompare::mod_revision(key, op, *v),
        CompareTarget::Value(v) => EtcdCompare::value(key, op, v.clone()),
        CompareTarget::Lease(v) => EtcdCompare::lease(key, op, *v),
    };
    if c.range_end.is_empty() {
        cmp
    } else {
        cmp.with_range(c.range_end.clone())
    }
}

fn op_out(op: &TxnOp) -> EtcdOp {
    match op {
        TxnOp::Range(r) => EtcdOp::get(r.key.clone(), Some(get_options(r))),
        TxnOp::Put(p) => EtcdOp::put(p.key.clone(), p.value.clone(), Some(put_options(p))),
        TxnOp::Delete(d) => EtcdOp::delete(d.key.clone(), Some(delete_options(d))),
        TxnOp::Txn(t) => EtcdOp::txn(txn_out(t)),
    }
}

fn txn_out(t: &TxnRequest) -> Txn {
    Txn::new()
        .when(t.compare.iter().map(compare_out).collect::<Vec<_>>())
        .and_then(t.success.iter().map(op_out).collect::<Vec<_>>())
        .or_else(t.failure.iter().map(op_out).collect::<Vec<_>>())
}

fn range_in(r: PbRangeResponse) -> RangeResponse {
    RangeResponse {
        revision: rev_of(&r.header),
        kvs: r.kvs.into_iter().map(kv_in).collect(),
        more: r.more,
        count: r.count,
    }
}

fn txn_in(t: PbTxnResponse) -> TxnResponse {
    TxnResponse {
        revision: rev_of(&t.header),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .filter_map(|r| r.response)
            .map(|r| match r {
                PbTxnOpResponse::ResponseRange(r) => TxnOpResponse::Range(range_in(r)),
                PbTxnOpResponse::ResponsePut(p) => TxnOpResponse::Put(PutResponse {
                    revision: rev_of(&p.header),
                    prev_kv: p.prev_kv.map(kv_in),
                }),
                PbTxnOpResponse::ResponseDeleteRange(d) => TxnOpResponse::Delete(DeleteResponse {
                    revision: rev_of(&d.header),
                    deleted: d.deleted,
                    prev_kvs: d.prev_kvs.into_iter().map(kv_in).collect(),
                }),
                PbTxnOpResponse::ResponseTxn(t) => TxnOpResponse::Txn(txn_in(t)),
            })
            .collect(),
    }
}

impl ExternalEtcd {
    pub async fn connect(cfg: &ExternalConfig) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(15));
        if cfg.ca_pem.is_some() || cfg.cert_pem.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca.clone()));
            }
            if let (Some(c), Some(k)) = (&cfg.cert_pem, &cfg.key_pem) {
                tls = tls.identity(Identity::from_pem(c.clone(), k.clone()));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(cfg.endpoints.clone(), Some(opts))
            .await
            .map_err(ext)?;
        Ok(ExternalEtcd { client })
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        let mut c = self.client.clone();
        let opts = get_options(&r);
        let resp = c.get(r.key, Some(opts)).await.map_err(ext)?;
        Ok(range_in(resp.0))
    }

    pub async fn txn(&self, t: TxnRequest) -> Result<TxnResponse> {
        let mut c = self.client.clone();
        let resp = c.txn(txn_out(&t)).await.map_err(ext)?;
        Ok(txn_in(resp.0))
    }

    pub async fn compact(&self, revision: Revision) -> Result<Revision> {
        let mut c = self.client.clone();
        let resp = c.compact(revision, None).await.map_err(ext)?;
        Ok(rev_of(&resp.0.header))
    }

    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        let mut c = self.client.clone();
        let opts = (id != 0).then(|| etcd_client::LeaseGrantOptions::new().with_id(id));
        let resp = c.lease_grant(ttl, opts).await.map_err(ext)?;
        Ok((resp.id(), resp.ttl()))
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<Revision> {
        let mut c = self.client.clone();
        let resp = c.lease_revoke(id).await.map_err(ext)?;
        Ok(rev_of(&resp.0.header))
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.map_err(ext)?;
        keeper.keep_alive().await.map_err(ext)?;
        match stream.message().await.map_err(ext)? {
            Some(r) if r.ttl() > 0 => Ok(r.ttl()),
            _ => Err(Error::LeaseNotFound),
        }
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseInfo> {
        let mut c = self.client.clone();
        let opts = keys.then(|| etcd_client::LeaseTimeToLiveOptions::new().with_keys());
        let resp = c.lease_time_to_live(id, opts).await.map_err(ext)?;
        Ok(LeaseInfo {
            id: resp.id(),
            ttl: resp.ttl(),
            granted_ttl: resp.granted_ttl(),
            keys: resp.keys().to_vec(),
        })
    }

    /// Watches through the external etcd; the same messages as the embedded store's.
    pub fn watch(
        &self,
        spec: WatchSpec,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<WatchMessage> {
        let (tx, rx) = mpsc::channel(128);
        let mut c = self.client.clone();
        tokio::spawn(async move {
            let mut opts = WatchOptions::new();
            if !spec.range_end.is_empty() {
                opts = opts.with_range(spec.range_end.clone());
            }
            if spec.start_revision > 0 {
                opts = opts.with_start_revision(spec.start_revision);
            }
            if spec.prev_kv {
                opts = opts.with_prev_key();
            }
            let mut filters = Vec::new();
            if spec.no_put {
                filters.push(etcd_client::WatchFilterType::NoPut);
            }
            if spec.no_delete {
                filters.push(etcd_client::WatchFilterType::NoDelete);
            }
            if !filters.is_empty() {
                opts = opts.with_filters(filters);
            }
            let mut stream = match c.watch(spec.key.clone(), Some(opts)).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(WatchMessage::Failed(ext(e).to_string())).await;
                    return;
                }
            };
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(r)) => r.0,
                    Ok(None) => {
                        let _ = tx
                            .send(WatchMessage::Failed("the watch ended".into()))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(WatchMessage::Failed(ext(e).to_string())).await;
                        return;
                    }
                };
                if resp.compact_revision > 0 {
                    let _ = tx
                        .send(WatchMessage::Compacted {
                            compact_revision: resp.compact_revision,
                        })
                        .await;
                    return;
                }
                if resp.canceled {
                    let _ = tx.send(WatchMessage::Failed(resp.cancel_reason)).await;
                    return;
                }
                if resp.events.is_empty() {
                    continue;
                }
                let events: Vec<Event> = resp
                    .events
                    .into_iter()
                    .filter_map(|e| {
                        Some(Event {
                            kind: if e.r#type == 1 {
                                EventKind::Delete
                            } else {
                                EventKind::Put
                            },
                            kv: kv_in(e.kv?),
                            prev_kv: e.prev_kv.map(kv_in),
                        })
                    })
                    .collect();
                let revision = events.last().map(|e| e.kv.mod_revision).unwrap_or(0);
                if tx
                    .send(WatchMessage::Events { revision, events })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        rx
    }
}
