//! Conversions between etcd's protobuf types and the store's own, and the mapping of store
//! errors onto the gRPC statuses and messages etcd clients recognise (etcd's rpctypes).
use etcd_client::proto::*;
use tonic::{Code, Status};

use crate::store::types::*;
use crate::store::Error;

pub fn header(h: Header) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

pub fn kv_out(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn event_out(e: Event) -> PbEvent {
    PbEvent {
        r#type: match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        },
        kv: Some(kv_out(e.kv)),
        prev_kv: e.prev_kv.map(kv_out),
    }
}

pub fn range_in(r: PbRangeRequest) -> Result<RangeRequest, Status> {
    Ok(RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            n => return Err(Status::invalid_argument(format!("invalid sort order {n}"))),
        },
        sort_target: match r.sort_target {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            n => return Err(Status::invalid_argument(format!("invalid sort target {n}"))),
        },
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn range_out(r: RangeResponse, h: Header) -> PbRangeResponse {
    PbRangeResponse {
        header: header(Header {
            revision: r.revision,
            ..h
        }),
        kvs: r.kvs.into_iter().map(kv_out).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_in(p: PbPutRequest) -> PutRequest {
    PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub fn put_out(p: PutResponse, h: Header) -> PbPutResponse {
    PbPutResponse {
        header: header(Header {
            revision: p.revision,
            ..h
        }),
        prev_kv: p.prev_kv.map(kv_out),
    }
}

pub fn delete_in(d: PbDeleteRequest) -> DeleteRequest {
    DeleteRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

pub fn delete_out(d: DeleteResponse, h: Header) -> PbDeleteResponse {
    PbDeleteResponse {
        header: header(Header {
            revision: d.revision,
            ..h
        }),
        deleted: d.deleted,
        prev_kvs: d.prev_kvs.into_iter().map(kv_out).collect(),
    }
}

fn compare_in(c: PbCompare) -> Result<Compare, Status> {
    let result = match c.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        n => {
            return Err(Status::invalid_argument(format!(
                "invalid compare result {n}"
            )))
        }
    };
    let target = match (c.target, c.target_union) {
        (0, Some(PbTargetUnion::Version(v))) => CompareTarget::Version(v),
        (1, Some(PbTargetUnion::CreateRevision(v))) => CompareTarget::CreateRevision(v),
        (2, Some(PbTargetUnion::ModRevision(v))) => CompareTarget::ModRevision(v),
        (3, Some(PbTargetUnion::Value(v))) => CompareTarget::Value(v),
        (4, Some(PbTargetUnion::Lease(v))) => CompareTarget::Lease(v),
        // proto3 drops zero values: a missing union means the target's zero value.
        (0, None) => CompareTarget::Version(0),
        (1, None) => CompareTarget::CreateRevision(0),
        (2, None) => CompareTarget::ModRevision(0),
        (3, None) => CompareTarget::Value(Vec::new()),
        (4, None) => CompareTarget::Lease(0),
        (t, _) => {
            return Err(Status::invalid_argument(format!(
                "invalid compare target {t}"
            )))
        }
    };
    Ok(Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    })
}

fn op_in(op: PbTxnRequestOp) -> Result<TxnOp, Status> {
    match op.request {
        Some(PbTxnOpRequest::RequestRange(r)) => Ok(TxnOp::Range(range_in(r)?)),
        Some(PbTxnOpRequest::RequestPut(p)) => Ok(TxnOp::Put(put_in(p))),
        Some(PbTxnOpRequest::RequestDeleteRange(d)) => Ok(TxnOp::Delete(delete_in(d))),
        Some(PbTxnOpRequest::RequestTxn(t)) => Ok(TxnOp::Txn(txn_in(t)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: empty request operation",
        )),
    }
}

pub fn txn_in(t: PbTxnRequest) -> Result<TxnRequest, Status> {
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_in)
            .collect::<Result<_, _>>()?,
        success: t.success.into_iter().map(op_in).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(op_in).collect::<Result<_, _>>()?,
    })
}

pub fn txn_out(t: TxnResponse, h: Header) -> PbTxnResponse {
    let h = Header {
        revision: t.revision,
        ..h
    };
    PbTxnResponse {
        header: header(h),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| PbResponseOp {
                response: Some(match r {
                    TxnOpResponse::Range(r) => PbTxnOpResponse::ResponseRange(range_out(r, h)),
                    TxnOpResponse::Put(p) => PbTxnOpResponse::ResponsePut(put_out(p, h)),
                    TxnOpResponse::Delete(d) => {
                        PbTxnOpResponse::ResponseDeleteRange(delete_out(d, h))
                    }
                    TxnOpResponse::Txn(t) => PbTxnOpResponse::ResponseTxn(txn_out(t, h)),
                }),
            })
            .collect(),
    }
}

pub fn member_out(m: Member) -> PbMember {
    PbMember {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: false,
    }
}

/// etcd's error strings: clients (clientv3, etcd-client, kube-apiserver) match on them.
pub fn status(e: Error) -> Status {
    match e {
        Error::Compacted { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        Error::FutureRevision { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        Error::LeaseNotFound => {
            Status::new(Code::NotFound, "etcdserver: requested lease not found")
        }
        Error::LeaseExists => {
            Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
        }
        Error::RequestTooLarge { .. } => {
            Status::new(Code::InvalidArgument, "etcdserver: request is too large")
        }
        Error::TooManyOps => Status::new(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        Error::DuplicateKey => Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        Error::EmptyKey => Status::new(Code::InvalidArgument, "etcdserver: key is not provided"),
        Error::NotLeader { .. } => Status::new(Code::Unavailable, "etcdserver: not leader"),
        Error::NoLeader => Status::new(Code::Unavailable, "etcdserver: no leader"),
        Error::NoSpace(_) => Status::new(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        Error::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        Error::Timeout => Status::new(Code::Unavailable, "etcdserver: request timed out"),
        Error::MemberNotFound => Status::new(Code::NotFound, "etcdserver: member not found"),
        Error::InvalidArgument(m) if m == "key not found" => {
            Status::new(Code::InvalidArgument, "etcdserver: key not found")
        }
        Error::InvalidArgument(m) => Status::new(Code::InvalidArgument, format!("etcdserver: {m}")),
        e @ (Error::Corrupt(_) | Error::Io(_) | Error::External(_)) => {
            Status::new(Code::Internal, format!("etcdserver: {e}"))
        }
    }
}
